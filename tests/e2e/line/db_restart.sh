# The station database restarts in the middle of a run (a failover, a crash of PostgreSQL): the
# journal's sessions and the group commit's batches see their connections drop. The line keeps the
# claims with their chips, retries the devices whose step failed, and every device ends published,
# once, with the invariants of DESIGN section 9 (3-5) intact.
source "$(dirname "$0")/common.sh"
dir=${1:?work dir}
rm -rf "$dir"
N=${LINE_DBR_DEVICES:-120}
LINE_DEVICE_FLAGS="--delay-flash-ms 200 --quiet" line_up "$dir" "$N"
line_fleet_file "$LINE_DIR/fleet.txt"
"$LINE_BIN/keyline-station" run --fleet "$LINE_DIR/fleet.txt" -j 16 --progress plain --publish-wait 120 \
  >"$LINE_DIR/logs/run.log" 2>&1 &
pid=$!
for _ in $(seq 200); do
  [ "$(line_station_sql "SELECT count(*) FROM journal.device WHERE state = 'published'")" -gt 10 ] && break
  sleep 0.05
done
before=$(line_station_sql "SELECT count(*) FROM journal.device WHERE state = 'published'")
"$here/../../../scripts/pg.sh" stop "$LINE_DIR/pg" >/dev/null
sleep 2
"$here/../../../scripts/pg.sh" start "$LINE_DIR/pg" >/dev/null
rc=0
wait "$pid" || rc=$?
cat "$LINE_DIR/logs/run.log"
[ "$rc" -eq 0 ] || fail "run exited $rc"
grep -Eq '\| done \(published\) +\| +'"$N"' \|' "$LINE_DIR/logs/run.log" || fail "summary does not show $N done"
check_line_invariants "$N"
ok "station database restarted after $before devices: all $N published once, invariants hold"
