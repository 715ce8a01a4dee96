# Crash safety (issue #7): 200 devices, the station killed at random steps at least 20 times (abort()
# through the fault hook at a chosen step, and kill -9 from outside at a random moment), restarted
# each time; then the invariants of docs/design.md section 9 (3-5) are checked.
source "$(dirname "$0")/common.sh"
dir=${1:?work dir}
rm -rf "$dir"
N=${LINE_CRASH_DEVICES:-200}
KILLS=${LINE_CRASH_KILLS:-24}
# Realistic device delays (10/50/300 ms): each run must die with devices still in flight and the
# fleet unfinished; without delays a fast station finishes all 200 devices within a few runs and
# the later crash points are never reached.
LINE_DEVICE_FLAGS="--delays realistic" line_up "$dir" "$N"
"$LINE_BIN/keyline-station" pool generate --tac 35780502 --count 100 >/dev/null
line_fleet_file "$LINE_DIR/fleet.txt"
# The drainer's crash point first: records wait in the outbox while the public DB is away, then the
# station dies after the public DB accepted one and before the outbox row is marked.
line_backupdb_stop
rc=0
"$LINE_BIN/keyline-station" run --fleet "$LINE_DIR/fleet.txt" -j 4 --count 12 --progress plain --publish-wait 0 \
  >"$LINE_DIR/logs/run-down.log" 2>&1 || rc=$?
[ "$rc" -eq 4 ] || fail "run with the public DB away exited $rc, want 4 (records wait in the outbox)"
line_backupdb_start
sleep 2.5  # the outbox rows' next attempt falls due
rc=0
"$LINE_BIN/keyline-station-faulty" run --fleet "$LINE_DIR/fleet.txt" -j 4 --progress plain --crash-at drain:3 \
  >"$LINE_DIR/logs/run-drain.log" 2>&1 || rc=$?
[ "$rc" -eq 134 ] || fail "no crash in the drainer (exit $rc)"
echo "run: crash at drain:3 -> exit $rc"
steps=(read-device claim issue store backup record drain)
[ "${LINE_KEY_SOURCE:-}" = device ] && steps+=(attest)  # the e2e.line.crash.scp11a_device variant
RANDOM=${LINE_CRASH_SEED:-7}
kills=0
for ((i = 0; i < KILLS; i++)); do
  log="$LINE_DIR/logs/run-$i.log"
  if ((i % 4 == 3)); then
    # kill -9 from outside at a random moment.
    "$LINE_BIN/keyline-station" run --fleet "$LINE_DIR/fleet.txt" -j 4 --progress plain --publish-wait 5 >"$log" 2>&1 &
    pid=$!
    sleep "0.$((RANDOM % 4 + 1))"
    kill -9 "$pid" 2>/dev/null && kills=$((kills + 1))
    wait "$pid" 2>/dev/null || true
    echo "run $i: kill -9"
  else
    step=${steps[RANDOM % ${#steps[@]}]}
    nth=$((RANDOM % 5 + 1))
    rc=0
    "$LINE_BIN/keyline-station-faulty" run --fleet "$LINE_DIR/fleet.txt" -j 4 --progress plain --publish-wait 5 \
      --crash-at "$step:$nth" >"$log" 2>&1 || rc=$?
    # abort() is SIGABRT: 134 from bash.
    [ "$rc" -eq 134 ] && kills=$((kills + 1))
    echo "run $i: crash at $step:$nth -> exit $rc"
  fi
done
kills=$((kills + 1))
((kills >= 20)) || fail "only $kills of $KILLS runs were killed (want 20)"
"$LINE_BIN/keyline-station" status
"$LINE_BIN/keyline-station" run --fleet "$LINE_DIR/fleet.txt" -j 8 --progress plain | tee "$LINE_DIR/logs/final.log" ||
  fail "final clean run failed"
check_line_invariants "$N"
ok "$kills kills survived"
