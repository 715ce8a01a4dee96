#!/usr/bin/env bash
# Runs scripts/demo.sh with 3 devices into the build tree and checks summary.json against docs/design.md section 8.
set -euo pipefail
cd "$KEYLINE_SOURCE_DIR"
mkdir -p "$KEYLINE_DEMO_TEST_DIR"
dir=$(realpath --relative-to="$KEYLINE_SOURCE_DIR" "$KEYLINE_DEMO_TEST_DIR")
# Twice: a second run must work without anyone cleaning up after the first.
for run in 1 2; do
  KEYLINE_DEMO_DIR="$dir" scripts/demo.sh 3 >"$KEYLINE_DEMO_TEST_DIR.log" 2>&1 || {
    tail -40 "$KEYLINE_DEMO_TEST_DIR.log"
    echo "FAIL: demo.sh run $run exited non-zero"
    exit 1
  }
  echo "ok: demo run $run"
done
python3 - "$dir/summary.json" <<'PY'
import json, os, subprocess, sys
s = json.load(open(sys.argv[1]))
def check(cond, what):
    if not cond:
        print("FAIL:", what); sys.exit(1)
    print("ok:", what)
check(s["devices_personalized"] == 3, "3 devices personalized")
check(s["devices_published"] == 3, "3 records published")
for k in ("root_ca", "device_ca"):
    check(not os.path.isabs(s[k]) and os.path.isfile(s[k]), k + " is a relative path to a file")
check(len(s["identity_certs"]) == 3, "3 identity certificates listed")
for c in s["identity_certs"]:
    r = subprocess.run(["openssl", "verify", "-CAfile", s["root_ca"], "-untrusted", s["device_ca"], c],
                       capture_output=True, text=True)
    check(r.returncode == 0, "openssl verify " + c)
rec = s["recovery"]
check(len(rec["chip_id"]) == 20, "recovery names a chip ID")
check(rec["imei_before"] and rec["imei_before"] == rec["imei_after"], "same IMEI after restore")
check(rec["key_fingerprints_match"] is True, "same key fingerprints after restore")
check("kps_transfer" in s, "kps_transfer present")
kps = s["kps_transfer"]
check(kps.get("ok") is True, "kps_transfer.ok: a key moved between two devices through the KPS")
check(len(kps["source"]) == 20 and len(kps["target"]) == 20 and kps["source"] != kps["target"],
      "kps_transfer names two different chips")
check(len(kps["kcv_source"]) == 6 and kps["kcv_source"] == kps["kcv_target"], "source and target key check values equal")
check(s.get("channel") == "scp11a" and s.get("key_source") == "device",
      "every device personalized over scp11a with keys generated in the chip")
check(os.path.isfile(s.get("chip_vendor_ca", "")), "chip_vendor_ca names the vendor CA file")
cer = s.get("ceremony", {})
check(cer.get("log_verified") is True and os.path.isdir(cer.get("root_token", "")), "the ceremony log verifies")
log = s.get("log", {})
check(log.get("recovery_inclusion_verified") is True and int(log.get("records_logged", 0)) >= 3,
      "the log holds the records and the restore checked its inclusion")
check(os.path.isfile(log.get("checkpoint", "")) and os.path.isfile(log.get("log_key", "")), "log checkpoint and key files")
svc = s.get("service_session", {})
check(svc.get("ok") is True and len(svc.get("chip_id", "")) == 20, "service_session.ok for a named chip")
PY
# Every program's log of the demo (station, ceremony, public DB, KPS, service, recovery, devices) holds
# none of the devices' secrets (tests/e2e/lib/secrets_scan.sh).
. "$KEYLINE_SOURCE_DIR/tests/e2e/lib/secrets_scan.sh"
mapfile -t demo_devices < <(find "$dir" -path '*/secure/chip.key' -printf '%h\n' | xargs -r -n1 dirname)
secrets_collect "${demo_devices[@]}"
mapfile -t demo_logs < <(find "$dir/logs" -type f)
[ "$SECRETS_DEVICES" -ge 3 ] && [ "${#demo_logs[@]}" -ge 5 ] ||
  { echo "FAIL: the scan has $SECRETS_DEVICES personalized devices and ${#demo_logs[@]} logs"; exit 1; }
secrets_plant_check "${demo_logs[0]}" || { echo "FAIL: the secrets scan misses a planted secret"; exit 1; }
if ! secrets_scan "${demo_logs[@]}"; then echo "FAIL: a device secret in the demo's logs"; exit 1; fi
echo "ok: no secret of ${SECRETS_DEVICES} devices (${#SECRETS_NEEDLES[@]} values) in ${#demo_logs[@]} logs"
# The logs that are JSON lines (docs/operations.md, "Logs"): every line one object, an event or a request;
# the devices' (core/json_log.h) also with time (RFC 3339 UTC, ms), level and program, and some an IMEI.
python3 - "$dir/logs" <<'PY'
import json, re, sys
d = sys.argv[1]
for name in ("backupdb.log", "kps.log", "service.log", "fleet.log"):
    lines = [l for l in open(f"{d}/{name}") if l.strip()]
    for l in lines:
        o = json.loads(l)
        if not isinstance(o, dict) or not ("event" in o or "status" in o):
            print(f"FAIL: {name}: neither an event nor a request: {l.strip()}"); sys.exit(1)
        if name == "fleet.log" and not (re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o.get("time", ""))
                                        and o.get("level") in ("debug", "info", "warn", "error")
                                        and o.get("program") == "keyline-device"):
            print(f"FAIL: {name}: not a core/json_log.h line: {l.strip()}"); sys.exit(1)
    if name == "fleet.log" and not any("imei" in json.loads(l) for l in lines):
        print("FAIL: fleet.log: no line names an IMEI"); sys.exit(1)
    print(f"ok: {name}: {len(lines)} JSON lines")
PY
# The demo stopped everything it started: nothing listens from its directory any more.
if pgrep -f "$KEYLINE_DEMO_TEST_DIR/" >/dev/null; then
  echo "FAIL: processes of the demo are still running"
  pgrep -af "$KEYLINE_DEMO_TEST_DIR/"
  exit 1
fi
echo "ok: the demo stopped every process it started"
