# keyline-station run as an operator uses it (issue #7): a line profile (fleet file, concurrency, pool
# top-up from a TAC range, application items), --count, SIGTERM drain, progress, status, a bad profile.
source "$(dirname "$0")/common.sh"
dir=${1:?work dir}
rm -rf "$dir"
N=30
LINE_DEVICE_FLAGS="--delays realistic --quiet" line_up "$dir" "$N"
line_fleet_file "$LINE_DIR/fleet.txt"
st="$LINE_BIN/keyline-station"
cat >"$LINE_DIR/profile.json" <<JSON
{ "fleet_file": "$LINE_DIR/fleet.txt", "concurrency": 4,
  "tac": "35780502", "pool_low_water": 40, "pool_refill": 20,
  "application_items": { "0F01": "CAFE", "0F02": "0102030405" } }
JSON

# A bad profile is refused with a one-line reason and exit 2, before anything is claimed.
echo '{ "devices": ["nohost"] }' >"$LINE_DIR/bad.json"
rc=0; "$st" run --profile "$LINE_DIR/bad.json" 2>"$LINE_DIR/bad.err" || rc=$?
[ "$rc" -eq 2 ] && grep -q 'devices\[0\] is not HOST:PORT' "$LINE_DIR/bad.err" || fail "bad profile: exit $rc $(cat "$LINE_DIR/bad.err")"
echo '{ "concurency": 4 }' >"$LINE_DIR/bad2.json"
rc=0; "$st" run --profile "$LINE_DIR/bad2.json" 2>"$LINE_DIR/bad.err" || rc=$?
[ "$rc" -eq 2 ] && grep -q 'unknown field "concurency"' "$LINE_DIR/bad.err" || fail "typo in profile: exit $rc"
ok "bad profiles refused"

# --count: stops once 6 devices are published; the pool is topped up from the TAC range.
"$st" run --profile "$LINE_DIR/profile.json" --count 6 --progress plain | tee "$LINE_DIR/logs/count.log"
pub=$(line_station_sql "SELECT count(*) FROM journal.device WHERE state = 'published'")
[ "$pub" -ge 6 ] && [ "$pub" -le 10 ] || fail "--count 6 published $pub"
grep -Eq '\| done \(published\) +\| +([6-9]|10) \|' "$LINE_DIR/logs/count.log" || fail "summary table"
pool=$(line_station_sql "SELECT count(*) FROM pool.imei")
((pool >= 40)) || fail "pool not topped up ($pool)"
ok "--count 6: $pub published, pool topped up to $pool"

# SIGTERM drains: in-flight devices finish, nothing new starts, nothing is left half-done.
"$st" run --profile "$LINE_DIR/profile.json" --progress tty >"$LINE_DIR/logs/term.log" 2>&1 &
pid=$!
# Stop as soon as the first device of this run is done: most are then still waiting to start.
for _ in $(seq 200); do
  tr '\r' '\n' <"$LINE_DIR/logs/term.log" | grep -Eq "^done ([1-9]|[1-9][0-9])/" && break
  sleep 0.05
done
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
cat "$LINE_DIR/logs/term.log" | tr '\r' '\n' | tail -14
[ "$rc" -eq 0 ] || fail "run after SIGTERM exited $rc"
grep -q $'\r' "$LINE_DIR/logs/term.log" || fail "no terminal progress line"
half=$(line_station_sql "SELECT count(*) FROM journal.device WHERE state NOT IN ('published','void')")
[ "$half" -eq 0 ] || fail "$half devices left half-done after SIGTERM"
pub2=$(line_station_sql "SELECT count(*) FROM journal.device WHERE state = 'published'")
((pub2 > pub && pub2 < N)) || fail "after SIGTERM: $pub2 published (before $pub, of $N)"
grep -Eq '\| not started +\| +[1-9]' "$LINE_DIR/logs/term.log" || fail "summary does not show devices not started"
ok "SIGTERM: drained with $pub2 published, nothing half-done"

"$st" status | tee "$LINE_DIR/logs/status.log"
grep -q "published: $pub2" "$LINE_DIR/logs/status.log" || fail "status"

# The rest of the line, then the invariants over every device.
"$st" run --profile "$LINE_DIR/profile.json" -j 16 --progress plain | tail -3
check_line_invariants "$N"

# A device that is away at restart while its journal row is 'claimed': the claim stays with the chip
# (its IMEI is neither reissued nor back in the pool), the run reports it, and it resumes with the
# same IMEI once the device is back on a fixture (at another address).
"$LINE_BIN/keyline-device" make --dir "$LINE_DIR/lone" --rom-ca "$LINE_DIR/pki/root.pem" >/dev/null
serve_lone() {
  "$LINE_BIN/keyline-device" serve --dir "$LINE_DIR/lone" --listen 127.0.0.1:0 --quiet >"$LINE_DIR/lone.out" 2>/dev/null &
  lone_pid=$!
  for _ in $(seq 50); do grep -q '^listening' "$LINE_DIR/lone.out" && break; sleep 0.1; done
  grep '^listening' "$LINE_DIR/lone.out" >"$LINE_DIR/lone.txt"
}
serve_lone
# The operator's binary has no fault hook: --crash-at is an unknown option (exit 2, nothing runs) and
# KEYLINE_STATION_CRASH_AT is ignored (the run below resumes the device through read-device, claim ...).
rc=0; "$st" run --fleet "$LINE_DIR/lone.txt" --progress plain --crash-at claim:1 >"$LINE_DIR/logs/no-crash-at.log" 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "keyline-station accepted --crash-at: exit $rc"
grep -q -- '--crash-at' "$LINE_DIR/logs/no-crash-at.log" || fail "keyline-station did not name the unknown --crash-at"
# A database password on the command line is refused before anything runs (exit 2, one line naming
# where it may come from); the same connection string from the environment is taken.
rc=0; "$st" --db "$KEYLINE_STATION_DB password=not-here" status >"$LINE_DIR/logs/argv-pw.log" 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "keyline-station took a password on its command line: exit $rc"
grep -q -- '--db-password-file' "$LINE_DIR/logs/argv-pw.log" || fail "the refusal does not say where the password may come from"
grep -q 'not-here' "$LINE_DIR/logs/argv-pw.log" && fail "the refusal repeats the password"
"$st" status >/dev/null 2>&1 || fail "keyline-station status from the environment failed"
rc=0; "$LINE_BIN/keyline-station-faulty" run --fleet "$LINE_DIR/lone.txt" --progress plain --crash-at claim:1 >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 134 ] || fail "crash at claim: exit $rc"
chip=$(awk '{print $3}' "$LINE_DIR/lone.txt")
imei=$(line_station_sql "SELECT imei FROM journal.device WHERE chip_id = '$chip' AND state = 'claimed'")
[ -n "$imei" ] || fail "no claimed row for $chip"
kill "$lone_pid"; wait "$lone_pid" 2>/dev/null || true
rc=0; "$st" run --fleet "$LINE_DIR/lone.txt" --progress plain >"$LINE_DIR/logs/away.log" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || fail "device away: exit $rc"
grep -Eq '\| unfinished in the journal +\| +1 \|' "$LINE_DIR/logs/away.log" || fail "summary does not show the unfinished claim"
[ "$(line_station_sql "SELECT count(*) FROM pool.imei WHERE imei = '$imei'")" -eq 0 ] || fail "claimed IMEI back in the pool"
serve_lone
KEYLINE_STATION_CRASH_AT=read-device:1 "$st" run --fleet "$LINE_DIR/lone.txt" --progress plain >"$LINE_DIR/logs/back.log" 2>&1 \
  || fail "device back: run failed (exit $?; KEYLINE_STATION_CRASH_AT must be ignored by keyline-station)"
kill "$lone_pid"; wait "$lone_pid" 2>/dev/null || true
[ "$(line_public_sql "SELECT imei FROM records WHERE chip_id = '$chip'")" = "$imei" ] || fail "resumed with another IMEI"
[ "$(line_station_sql "SELECT count(*) FROM journal.device WHERE chip_id = '$chip'")" -eq 1 ] || fail "second journal row"
ok "device away after its claim: IMEI $imei kept for chip $chip, published once it came back"
