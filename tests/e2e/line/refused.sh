# A record the public DB refuses for good is parked for an operator, not resent forever (issue #7:
# a line never loses a record, and says what needs a person). A second station whose own secure DB
# was given the same IMEI range as the first (a real misconfiguration) personalizes other devices
# with IMEIs the public DB already holds: it answers 409 (conflict on the IMEI). The run reports those
# devices failed with that reason and ends; the records stay parked in the outbox (`status` lists
# them), `publish` leaves them alone, `publish --retry-refused` sends them once more (refused again:
# the conflict is still there). The first station's records are untouched.
source "$(dirname "$0")/common.sh"
dir=${1:?work dir}
rm -rf "$dir"
N=8
half=$((N / 2))
line_up "$dir" "$N"
line_fleet_file "$LINE_DIR/fleet.txt"
head -n "$half" "$LINE_DIR/fleet.txt" >"$LINE_DIR/fleet-a.txt"
tail -n +"$((half + 1))" "$LINE_DIR/fleet.txt" >"$LINE_DIR/fleet-b.txt"
"$LINE_BIN/keyline-station" run --fleet "$LINE_DIR/fleet-a.txt" -j 4 --progress plain >"$LINE_DIR/logs/a.log" 2>&1 ||
  { cat "$LINE_DIR/logs/a.log"; fail "station A failed"; }

# Station B: a station database of its own whose pool starts at the same serials as A's.
psql "$LINE_PG_CONNINFO" -qc "CREATE DATABASE keyline_station_b" >/dev/null
b_db="${LINE_PG_CONNINFO/dbname=postgres/dbname=keyline_station_b}"
b() { KEYLINE_STATION_DB=$b_db "$LINE_BIN/keyline-station" --station-id station-b "$@"; }
b_sql() { psql "$b_db" -tAc "$1"; }
b pool generate --tac 35780502 --count "$half" >/dev/null
rc=0
b run --fleet "$LINE_DIR/fleet-b.txt" -j 4 --progress plain --publish-wait 60 >"$LINE_DIR/logs/b.log" 2>&1 || rc=$?
cat "$LINE_DIR/logs/b.log"
[ "$rc" -eq 1 ] || fail "station B exited $rc, want 1 (devices failed)"
grep -Eq '\| failed +\| +'"$half"' \|' "$LINE_DIR/logs/b.log" || fail "summary does not show $half failed"
grep -Eq '\| refused by the public DB +\| +'"$half"' \|' "$LINE_DIR/logs/b.log" || fail "summary does not show $half refused"
[ "$(grep -c 'public DB refused the record: HTTP 409' "$LINE_DIR/logs/b.log")" -eq "$half" ] ||
  fail "the failures do not carry the public DB's 409"

[ "$(line_public_sql "SELECT count(*) FROM records")" -eq "$half" ] || fail "public DB holds other than A's $half records"
[ "$(line_public_sql "SELECT count(*) FROM records WHERE chip_id IN ($(cut -d' ' -f3 "$LINE_DIR/fleet-b.txt" |
  sed "s/.*/'&'/" | paste -sd,))")" -eq 0 ] || fail "a refused record reached the public DB"
[ "$(b_sql "SELECT count(*) FROM journal.device WHERE state = 'backed_up'")" -eq "$half" ] ||
  fail "B's devices are not all backed up"
[ "$(b_sql "SELECT count(*) FROM journal.outbox WHERE refused_at IS NOT NULL AND published_at IS NULL AND attempts = 1")" -eq "$half" ] ||
  fail "B's records are not parked after one attempt"

b status >"$LINE_DIR/logs/status.txt"
cat "$LINE_DIR/logs/status.txt"
grep -q "outbox: 0 waiting, $half refused (parked)" "$LINE_DIR/logs/status.txt" || fail "status does not count the parked records"
[ "$(grep -c '^  refused: chip .* HTTP 409' "$LINE_DIR/logs/status.txt")" -eq "$half" ] || fail "status does not list them"
b status --json | grep -q "\"refused\":$half" || fail "status --json does not count them"

# Parked records stay parked until an operator asks.
b publish >"$LINE_DIR/logs/publish.txt" || fail "publish with only parked records exited $?"
grep -q "$half parked in all" "$LINE_DIR/logs/publish.txt" || fail "publish does not mention the parked records"
[ "$(b_sql "SELECT max(attempts) FROM journal.outbox")" -eq 1 ] || fail "publish sent a parked record"
rc=0
b publish --retry-refused >"$LINE_DIR/logs/retry.txt" || rc=$?
cat "$LINE_DIR/logs/retry.txt"
[ "$rc" -eq 5 ] || fail "publish --retry-refused exited $rc, want 5 (refused again)"
[ "$(b_sql "SELECT count(*) FROM journal.outbox WHERE refused_at IS NOT NULL AND attempts = 2")" -eq "$half" ] ||
  fail "the retried records were not sent once more and parked again"
rc=0
b publish --retry-refused --chip nonsense >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "a bad --chip exited $rc, want 2"
[ "$(line_public_sql "SELECT count(*) FROM records")" -eq "$half" ] || fail "the public DB changed"
ok "a 409 from the public DB: $half devices failed with the reason, records parked (status lists them), retried only on request"
