# Store and forward (issue #7): the public DB server stops in the middle of a run and starts again.
# The line keeps personalizing (records wait in the durable outbox), the backlog drains with backoff
# when the server is back, every record arrives exactly once, and a device counts as done only once
# published.
source "$(dirname "$0")/common.sh"
dir=${1:?work dir}
rm -rf "$dir"
N=${LINE_OUTBOX_DEVICES:-150}
# Device time so that the run (150 devices, 8 at once, ~0.3 s each: ~6 s) spans the 3 s outage.
LINE_DEVICE_FLAGS="--delay-flash-ms 300 --quiet" line_up "$dir" "$N"
line_fleet_file "$LINE_DIR/fleet.txt"
run_in_background --fleet "$LINE_DIR/fleet.txt" -j 8 --publish-wait 120
# The outage starts once the public DB has taken the first records, so it falls in the middle of the run.
wait_published 0
line_backupdb_stop
sleep 3
during=$(line_station_sql "SELECT count(*) FROM journal.outbox WHERE published_at IS NULL")
personalized_down=$(line_station_sql "SELECT count(*) FROM journal.device WHERE state = 'backed_up'")
echo "while the public DB was down: $during records waiting, $personalized_down devices backed up"
((during > 0)) || fail "nothing waited in the outbox while the public DB was down"
done_down=$(line_station_sql "SELECT count(*) FROM journal.device WHERE state = 'published'")
line_backupdb_start
finish_run "$N"
grep -q "outbox [1-9]" "$LINE_DIR/logs/run.log" || fail "the progress never showed a backlog"
# Exactly once: the public DB created each record once (201); re-sends of a record it already had are 200.
created=$(line_public_sql "SELECT count(*) FROM records")
[ "$created" -eq "$N" ] || fail "public DB has $created records, want $N"
check_line_invariants "$N"
ok "public DB away for 3 s: $during records waited ($done_down published before the outage), all $N arrived once"
