#!/usr/bin/env bash
# e2e.config.log_format (issue #19, docs/operations.md "Logs"): with KEYLINE_LOG_FORMAT=json every stderr
# line of keyline-station, keyline-ceremony and keyline-recovery is one JSON object with time, level,
# program, event and message; a device's failure names its chip and the error code. With text (the
# default) the lines are the ones the other tests grep, byte for byte.
source "$(dirname "$0")/../line/common.sh"
dir=${1:?work dir}
rm -rf "$dir"
line_up "$dir" 2
line_fleet_file "$LINE_DIR/fleet.txt"
logs=$LINE_DIR/logs

# check_json FILE PROGRAM: every line a JSON object with the common keys, of PROGRAM.
check_json() {
  python3 - "$1" "$2" <<'EOF' || fail "$1: not all JSON lines (above)"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines, "no line at all"
for l in lines:
    o = json.loads(l)
    for k in ("time", "level", "program", "event", "message"):
        assert k in o, (k, l)
    assert o["program"] == sys.argv[2], l
EOF
}

KEYLINE_LOG_FORMAT=json "$LINE_BIN/keyline-station" run --fleet "$LINE_DIR/fleet.txt" -j 2 --progress plain \
  >"$logs/run.out" 2>"$logs/run.err" || { cat "$logs/run.out" "$logs/run.err"; fail "the json run failed"; }
grep -q '^line: done 2/2' "$logs/run.out" || fail "stdout lost its progress lines"
# A personalized device again: it fails, its chip known.
chip=$(head -1 "$LINE_DIR/fleet.txt" | cut -d' ' -f3)
rc=0
KEYLINE_LOG_FORMAT=json "$LINE_BIN/keyline-station" personalize --device "${LINE_DEVICES[0]}" \
  >"$logs/again.out" 2>"$logs/again.err" || rc=$?
cat "$logs/again.err"
[ "$rc" -ne 0 ] || fail "personalizing a personalized device succeeded"
check_json "$logs/again.err" keyline-station
python3 - "$logs/again.err" "$chip" <<'EOF' || fail "no device failure line with chip and code"
import json, sys
chip = sys.argv[2]
assert any(o.get("level") == "error" and o.get("chip") == chip and o.get("code", 0) > 0
           for o in map(json.loads, open(sys.argv[1]).read().splitlines()))
EOF
[ ! -s "$logs/run.err" ] || check_json "$logs/run.err" keyline-station
ok "station: JSON stderr lines, the failure names chip $chip and its code"

# Text (the default): the line the other tests grep, unchanged.
"$LINE_BIN/keyline-station" personalize --device "${LINE_DEVICES[0]}" >/dev/null 2>"$logs/again-text.err" || true
grep -Eq "^keyline-station: ${LINE_DEVICES[0]}: error [0-9]+: " "$logs/again-text.err" ||
  { cat "$logs/again-text.err"; fail "the text line changed"; }
ok "station: text line unchanged: $(head -1 "$logs/again-text.err")"

# The setting from the station's config file; a flag wins over it.
printf 'log_format = "json"\n' >"$LINE_DIR/log.toml"
KEYLINE_STATION_DB="host=/nonexistent dbname=none" "$LINE_BIN/keyline-station" --config "$LINE_DIR/log.toml" status \
  >/dev/null 2>"$logs/file.err" && fail "status without a database succeeded"
check_json "$logs/file.err" keyline-station
KEYLINE_STATION_DB="host=/nonexistent dbname=none" "$LINE_BIN/keyline-station" --config "$LINE_DIR/log.toml" \
  --log-format text status >/dev/null 2>"$logs/file-text.err" && fail "status without a database succeeded"
grep -q '^keyline-station: error [0-9]*: ' "$logs/file-text.err" || { cat "$logs/file-text.err"; fail "--log-format text lost to the file"; }
ok "station: log_format from the config file, the flag over it"

# The ceremony: init-root twice, the second refused (7001).
"$(dirname "$0")/../../../scripts/hsm.sh" init "$LINE_DIR/root-hsm" keyline-root-token >/dev/null
cer() {
  SOFTHSM2_CONF="$LINE_DIR/root-hsm/softhsm2.conf" "$LINE_BIN/keyline-ceremony" --dir "$LINE_DIR/ceremony" \
    --hsm-module "$(cat "$LINE_DIR/root-hsm/module")" --token keyline-root-token \
    --pin-file "$LINE_DIR/root-hsm/user.pin" init-root --subject-cn "log test Root" --organization test --days 30
}
cer >/dev/null 2>"$logs/cer1.err" || { cat "$logs/cer1.err"; fail "init-root failed"; }
rc=0
KEYLINE_LOG_FORMAT=json cer >/dev/null 2>"$logs/cer2.err" || rc=$?
cat "$logs/cer2.err"
[ "$rc" -ne 0 ] || fail "a second init-root succeeded"
check_json "$logs/cer2.err" keyline-ceremony
grep -q '"level":"error".*"code":7001' "$logs/cer2.err" || fail "the ceremony's error line has no code 7001"
rc=0
cer >/dev/null 2>"$logs/cer3.err" || rc=$?
grep -q '^keyline-ceremony: error 7001: ' "$logs/cer3.err" || { cat "$logs/cer3.err"; fail "the ceremony's text line changed"; }
ok "ceremony: 7001 as a JSON line, and as text unchanged"

# Recovery: a chip ID that is none.
rc=0
"$LINE_BIN/keyline-recovery" --log-format json fetch --chip-id nonsense --db "$LINE_BACKUPDB_URL" \
  --out "$LINE_DIR/x.bundle" >/dev/null 2>"$logs/rec.err" || rc=$?
cat "$logs/rec.err"
[ "$rc" -ne 0 ] || fail "fetch of a bad chip ID succeeded"
check_json "$logs/rec.err" keyline-recovery
grep -q '"level":"error"' "$logs/rec.err" || fail "recovery's line is not an error"
ok "recovery: a bad chip ID as a JSON error line"
echo "PASS"
