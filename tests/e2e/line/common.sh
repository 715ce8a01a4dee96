# shellcheck shell=bash
# Shared by the line e2e tests: start a line, and the invariant checks of docs/design.md section 9 (3-5).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$here/../../../scripts/lib/line.sh"
trap line_down EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

# run_in_background ARGS...: `keyline-station run --progress plain ARGS` with its log in logs/run.log;
# sets RUN_PID.
run_in_background() {
  "$LINE_BIN/keyline-station" run --progress plain "$@" >"$LINE_DIR/logs/run.log" 2>&1 &
  RUN_PID=$!
}

# wait_published N: until more than N devices are published (10 s at most), so that an outage a
# test causes next falls in the middle of the run. Fails the test on timeout: an outage that starts
# before the run got going, or after it ended, proves nothing.
wait_published() {
  for _ in $(seq 200); do
    [ "$(line_station_sql "SELECT count(*) FROM journal.device WHERE state = 'published'")" -gt "$1" ] && return 0
    sleep 0.05
  done
  fail "no more than $1 devices published after 10 s: the run did not get going"
}

# published_count: devices the journal has as published.
published_count() { line_station_sql "SELECT count(*) FROM journal.device WHERE state = 'published'"; }

# finish_run N: waits for RUN_PID, prints its log, requires exit 0 and N devices done in the summary.
finish_run() {
  local rc=0
  wait "$RUN_PID" || rc=$?
  cat "$LINE_DIR/logs/run.log"
  [ "$rc" -eq 0 ] || fail "run exited $rc"
  grep -Eq '\| done \(published\) +\| +'"$1"' \|' "$LINE_DIR/logs/run.log" || fail "summary does not show $1 done"
}

# check_line_invariants N: after a clean final run over N devices.
check_line_invariants() {
  local n=$1
  local pub sec jpub dups
  pub=$(line_public_sql "SELECT count(*) FROM records")
  [ "$pub" -eq "$n" ] || fail "public DB holds $pub records, want $n"
  dups=$(line_public_sql "SELECT count(*) - count(DISTINCT imei) FROM records")
  [ "$dups" -eq 0 ] || fail "an IMEI twice in the public DB"
  sec=$(line_station_sql "SELECT count(*), count(DISTINCT imei) FROM secret.device")
  [ "$sec" = "$n|$n" ] || fail "secret DB rows|distinct IMEIs = $sec, want $n|$n"
  # Every device that reached done has its public record, with the same IMEI.
  line_station_sql "SELECT chip_id || ' ' || imei FROM journal.device WHERE state = 'published' ORDER BY 1" >"$LINE_DIR/j.txt"
  line_public_sql "SELECT chip_id || ' ' || imei FROM records ORDER BY 1" >"$LINE_DIR/p.txt"
  line_station_sql "SELECT chip_id || ' ' || imei FROM secret.device ORDER BY 1" >"$LINE_DIR/s.txt"
  jpub=$(wc -l <"$LINE_DIR/j.txt")
  [ "$jpub" -eq "$n" ] || fail "journal has $jpub published devices, want $n"
  cmp -s "$LINE_DIR/j.txt" "$LINE_DIR/p.txt" || fail "journal and public DB disagree: $(diff "$LINE_DIR/j.txt" "$LINE_DIR/p.txt" | head -5)"
  cmp -s "$LINE_DIR/j.txt" "$LINE_DIR/s.txt" || fail "journal and secret DB disagree"
  # Every claimed IMEI is accounted for: spent = published + void, none back in the pool, none live.
  local unacc back live
  unacc=$(line_station_sql "SELECT count(*) FROM pool.imei_spent s LEFT JOIN journal.device d USING (imei) WHERE d.imei IS NULL")
  [ "$unacc" -eq 0 ] || fail "$unacc spent IMEIs have no journal row"
  back=$(line_station_sql "SELECT count(*) FROM pool.imei p JOIN journal.device d USING (imei)")
  [ "$back" -eq 0 ] || fail "$back claimed IMEIs are back in the pool"
  live=$(line_station_sql "SELECT count(*) FROM journal.device WHERE state NOT IN ('published','void')")
  [ "$live" -eq 0 ] || fail "$live journal rows neither published nor void"
  # Secret material is wiped once the backup is in.
  local wrapped
  wrapped=$(line_station_sql "SELECT count(*) FROM journal.device WHERE identity_wrapped IS NOT NULL OR transport_wrapped IS NOT NULL")
  [ "$wrapped" -eq 0 ] || fail "$wrapped journal rows still hold wrapped keys"
  local pend
  pend=$(line_station_sql "SELECT count(*) FROM journal.outbox WHERE published_at IS NULL")
  [ "$pend" -eq 0 ] || fail "$pend records still in the outbox"
  # What each device holds is what the journal says.
  local d chip imei
  : >"$LINE_DIR/dev.txt"
  for d in "${LINE_DEVICE_DIRS[@]}"; do
    chip=$("$LINE_BIN/keyline-device" status --dir "$d" | awk '$1=="chip_id"{print $2}')
    imei=$("$LINE_BIN/keyline-device" status --dir "$d" | awk '$1=="imei"{print $2}')
    echo "$chip $imei" >>"$LINE_DIR/dev.txt"
  done
  sort -o "$LINE_DIR/dev.txt" "$LINE_DIR/dev.txt"
  cmp -s "$LINE_DIR/j.txt" "$LINE_DIR/dev.txt" || fail "devices and journal disagree: $(diff "$LINE_DIR/j.txt" "$LINE_DIR/dev.txt" | head -5)"
  ok "$n devices: public DB = secret DB = journal = devices; every claimed IMEI published or void; no wrapped key left"
}
