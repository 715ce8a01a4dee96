# Two stations share one temporary secure DB at the same time (issue #7, docs/design.md section 9 inv. 3):
# each runs its own half of the fleet with pre-generated keys from the shared pool; no IMEI and no
# key may be issued twice.
source "$(dirname "$0")/common.sh"
dir=${1:?work dir}
rm -rf "$dir"
N=${LINE_TWO_DEVICES:-160}
line_up "$dir" "$N"
# LINE_KEY_SOURCE=device (e2e.line.two_stations.scp11a_device): the chips make their keys, no pool keys.
ks=${LINE_KEY_SOURCE:-pool}
[ "$ks" = pool ] && "$LINE_BIN/keyline-station" pool generate --keys "$N" >/dev/null
line_fleet_file "$LINE_DIR/fleet.txt"
half=$((N / 2))
head -n "$half" "$LINE_DIR/fleet.txt" >"$LINE_DIR/fleet-a.txt"
tail -n +"$((half + 1))" "$LINE_DIR/fleet.txt" >"$LINE_DIR/fleet-b.txt"
"$LINE_BIN/keyline-station" --station-id station-a --key-source "$ks" run --fleet "$LINE_DIR/fleet-a.txt" -j 6 \
  --progress plain >"$LINE_DIR/logs/a.log" 2>&1 &
a=$!
"$LINE_BIN/keyline-station" --station-id station-b --key-source "$ks" run --fleet "$LINE_DIR/fleet-b.txt" -j 6 \
  --progress plain >"$LINE_DIR/logs/b.log" 2>&1 &
b=$!
ra=0 rb=0
wait "$a" || ra=$?
wait "$b" || rb=$?
cat "$LINE_DIR/logs/a.log" "$LINE_DIR/logs/b.log"
[ "$ra" -eq 0 ] && [ "$rb" -eq 0 ] || fail "station exits $ra $rb"
check_line_invariants "$N"
# Keys: every issued identity and transport key distinct, all from the pool, none left behind in it.
dupk=$(line_station_sql "SELECT count(*) - count(DISTINCT identity_public) + count(*) - count(DISTINCT transport_public) FROM journal.device")
[ "$dupk" -eq 0 ] || fail "a pre-generated key was issued twice"
left=$(line_station_sql "SELECT count(*) FROM pool.device_key")
[ "$left" -eq 0 ] || fail "$left key sets still in the pool, want 0 (one per device)"
if [ "$ks" = device ]; then
  att=$(line_station_sql "SELECT count(*) FROM secret.device WHERE key_source = 'device' AND identity_statement_sha256 IS NOT NULL AND transport_statement_sha256 IS NOT NULL")
  [ "$att" -eq "$N" ] || fail "$att of $N secret records name the device key source and both statements"
  plain=$(line_station_sql "SELECT count(*) FROM journal.device WHERE channel IS DISTINCT FROM 'scp11a'")
  [ "$plain" -eq 0 ] || fail "$plain journal rows not personalized over scp11a"
fi
per=$(line_station_sql "SELECT string_agg(station_id || '=' || n, ' ' ORDER BY station_id) FROM (SELECT station_id, count(*) n FROM journal.device GROUP BY 1) s")
[ "$per" = "station-a=$half station-b=$((N - half))" ] || fail "per station: $per"
ok "two stations at once over one secure DB: $per, no IMEI or key twice"
