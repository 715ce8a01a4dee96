# The station database restarts in the middle of a run (a failover, a crash of PostgreSQL): the
# journal's sessions and the group commit's batches see their connections drop. The line keeps the
# claims with their chips, retries the devices whose step failed, and every device ends published,
# once, with the invariants of docs/design.md section 9 (3-5) intact.
source "$(dirname "$0")/common.sh"
dir=${1:?work dir}
rm -rf "$dir"
N=${LINE_DBR_DEVICES:-120}
LINE_DEVICE_FLAGS="--delay-flash-ms 200 --quiet" line_up "$dir" "$N"
line_fleet_file "$LINE_DIR/fleet.txt"
run_in_background --fleet "$LINE_DIR/fleet.txt" -j 16 --publish-wait 120
wait_published 10
before=$(published_count)
"$here/../../../scripts/pg.sh" stop "$LINE_DIR/pg" >/dev/null
sleep 2
"$here/../../../scripts/pg.sh" start "$LINE_DIR/pg" >/dev/null
# The restart fell inside the run: the station was still running across it, and devices were still
# unpublished when the database went away (so some of them had to come through the restart).
kill -0 "$RUN_PID" 2>/dev/null || fail "the run had ended before the database came back"
[ "$before" -lt "$N" ] || fail "all $N devices were published before the restart"
after_restart=$(published_count)
[ "$after_restart" -lt "$N" ] || fail "all $N devices were published by the time the database was back"
finish_run "$N"
check_line_invariants "$N"
ok "station database restarted after $before of $N devices ($after_restart once back): all $N published once, invariants hold"
