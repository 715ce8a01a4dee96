# The errors a person meets on PC/SC readers (issue #13), each with its message and exit code:
# pcscd not running (1421, exit 4), no reader matching (1422, exit 4) - both before anything is opened or
# claimed -; a line on readers and TCP fixtures at once (exit 2); a reader without a card, waited for and
# then given up (exit 1, nothing claimed); --count ending a line on readers; pcscd going away under a running line (said once, the line
# drains on SIGTERM).
source "$(dirname "$0")/common.sh"
dir=${1:?work dir}
rm -rf "$dir"
mkdir -p "$dir"
st="$LINE_BIN/keyline-station"

# expect RC PATTERN CMD...: runs CMD, wants exit RC and PATTERN (grep -E) on stderr.
expect() {
  local want=$1 pattern=$2 rc=0
  shift 2
  "$@" >"$dir/out" 2>"$dir/err" || rc=$?
  [ "$rc" -eq "$want" ] || fail "$* exited $rc, want $want: $(cat "$dir/err")"
  grep -Eq "$pattern" "$dir/err" || fail "$*: stderr does not say /$pattern/: $(cat "$dir/err")"
  ok "$(head -1 "$dir/err")"
}

# pcscd not running: no socket at all, and a socket file nobody listens on. The station database is
# never reached (a database that does not exist is named): the readers are asked first.
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()' "$dir/stale.comm"
for sock in "$dir/none.comm" "$dir/stale.comm"; do
  export PCSCLITE_CSOCK_NAME=$sock
  expect 4 'error 1421: pcscd is not running' "$st" personalize --reader 'vpcd'
  expect 4 'error 1421: pcscd is not running' env KEYLINE_STATION_DB='host=/nonexistent dbname=none' "$st" run --readers all
done

N=1
pcsc_line_up "$dir/line" "$N"
# No reader matches: the patterns and the readers there are are named.
expect 4 "error 1422: no reader matches 'nomatch\\*', 'Gemalto' \\(readers: .*${PCSC_READERS[0]}" \
  "$st" personalize --reader 'nomatch*' --reader Gemalto
expect 4 "error 1422: no reader matches 'zz\\?'" "$st" run --reader 'zz?'
expect 2 'on readers \(--reader\) or on TCP fixtures' "$st" run --reader vpcd --device 127.0.0.1:1
expect 2 'readers' "$st" personalize --readers some

# A reader without a card: waited for (said on stderr), then given up; nothing claimed.
expect 1 "error 1402: no card put into reader \"${PCSC_READERS[0]}\" within 1 s \(--card-wait\)" \
  "$st" personalize --reader "${PCSC_READERS[0]}" --card-wait 1
grep -q "waiting for a card in reader \"${PCSC_READERS[0]}\" (up to 1 s, --card-wait)" "$dir/err" || fail "no word of the wait"
[ "$(line_station_sql "SELECT count(*) FROM journal.device")" -eq 0 ] || fail "something was claimed"

# --count ends a line on readers by itself: one card in, --count 1 (a line that waits on for more
# cards is killed after 60 s and fails).
card_in 0 --quiet
rc=0; timeout 60 "$st" run --readers all --count 1 --progress plain >"$dir/count.log" 2>&1 || rc=$?
[ "$rc" -eq 0 ] || fail "run --readers all --count 1 exited $rc (124: it did not end): $(tail -5 "$dir/count.log")"
grep -Eq '\| done \(published\) +\| +1 \|' "$dir/count.log" || fail "--count 1: summary does not show 1 done"
card_out 0
ok "--count 1 on readers: ended by itself with the card done"

# pcscd goes away under a running line: said once, the line goes on waiting, and drains on SIGTERM.
run_in_background --readers all
for _ in $(seq 200); do grep -q 'readers:' "$LINE_DIR/logs/run.log" && break; sleep 0.05; done
pcsc_down
for _ in $(seq 100); do grep -q 'PC/SC: ' "$LINE_DIR/logs/run.log" && break; sleep 0.1; done
sleep 2.5
kill -TERM "$RUN_PID"
rc=0; wait "$RUN_PID" || rc=$?
cat "$LINE_DIR/logs/run.log"
[ "$rc" -eq 0 ] || fail "the line exited $rc after SIGTERM"
[ "$(grep -c 'line: PC/SC: ' "$LINE_DIR/logs/run.log")" -eq 1 ] || fail "pcscd's end not said exactly once"
grep -q 'line: PC/SC: .*pcscd' "$LINE_DIR/logs/run.log" || fail "the line did not say that pcscd went away"
ok "pcscd gone under a running line: said once, drained on SIGTERM"
