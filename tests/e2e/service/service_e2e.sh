#!/usr/bin/env bash
# End-to-end test of keyline-service (docs/service.md) with the real device agent: a line personalizes
# two devices (their records go to the public DB); keyline-service serves on the station's token (the
# devices are of derivation version 1, the line's master); a campaign pushes an item and a module to
# device 0; `keyline-device service-agent` runs the session; the device reboots with both; a step
# posted twice is 409; a chip the public DB does not know is 404; the module sign command signs on the
# token with a code-signing certificate issued under the line's root; the service's log and database
# hold no key bytes of the device (keyline-test-unseal).
# Usage: service_e2e.sh WORKDIR   (LINE_BIN = directory holding the keyline-* programs)
set -euo pipefail

work=${1:?usage: service_e2e.sh WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
# shellcheck source=../../../scripts/lib/service.sh
source "$top/scripts/lib/service.sh"
trap line_down EXIT

rm -rf "$work"
mkdir -p "$work"
line_up "$work/line" 2
line_personalize >"$work/personalize.json"
DEV="$LINE_BIN/keyline-device"
CA="$LINE_DIR/pki/tls-ca.pem"
failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
ddir() { echo "${LINE_DEVICE_DIRS[$1]}"; }
chip() { "$DEV" status --dir "$(ddir "$1")" | awk '$1 == "chip_id" {print $2}'; }
imei() { "$DEV" status --dir "$(ddir "$1")" | awk '$1 == "imei" {print $2}'; }

service_up || { echo "FAIL keyline-service did not start"; exit 1; }
service_code_signing "$work/cs" || { echo "FAIL no code-signing certificate"; exit 1; }
printf 'apn=internet.example\n' >"$work/apn.bin"
printf 'radio firmware 3\n' >"$work/radio.body"
imei 0 >"$work/imeis.txt"
service_cli module sign --in "$work/radio.body" --name radio --version 3 --cert "$work/cs/cs.pem" --out "$work/radio.mod" &&
  pass "module signed on the token" || fail "module sign"
service_cli campaign --name cfg-1 --item "0F01=$work/apn.bin" --imeis "$work/imeis.txt"
service_cli campaign --name radio-3 --module "$work/radio.mod" --trust "$LINE_DIR/pki/root.pem" \
  --imeis "$work/imeis.txt"
# Rerunning a campaign queues nothing new (resume after a crash is the same command).
service_cli campaign --name cfg-1 --item "0F01=$work/apn.bin" --imeis "$work/imeis.txt" |
  grep -q "0 job(s) queued, 1 already queued" && pass "campaign rerun is idempotent" || fail "campaign rerun queued again"

rc=0
"$DEV" service-agent --dir "$(ddir 0)" --service "$LINE_SERVICE_URL" --ca "$CA" >"$work/session.json" 2>"$work/session.err" || rc=$?
if [ "$rc" -eq 0 ] && grep -q '"ok":true' "$work/session.json"; then pass "session ok: $(head -c 300 "$work/session.json")"
else fail "session: exit $rc $(cat "$work/session.json" "$work/session.err")"; fi
"$DEV" boot --dir "$(ddir 0)" >"$work/boot.txt" || fail "device 0 does not boot after the session"
grep -qi "radio" "$work/boot.txt" && pass "module radio installed across a reboot" || fail "boot shows no module: $(cat "$work/boot.txt")"
grep -qi "0F01" "$work/boot.txt" && pass "item 0F01 kept across a reboot" || fail "boot shows no item 0F01"
service_cli campaign status --name radio-3 | grep -q "1 applied" &&
  pass "campaign status: applied" || fail "campaign status: $(service_cli campaign status --name radio-3)"

# A session's second step posted twice: the second is 409.
open=$(curl -sf --cacert "$CA" -H 'Content-Type: application/json' -d "{\"chip_id\":\"$(chip 1)\"}" \
  "$LINE_SERVICE_URL/v1/device/sessions")
sid=$(printf '%s' "$open" | sed -n 's/.*"session":"\([0-9A-F]*\)".*/\1/p')
body='{"responses":["6A82"]}'
c1=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" -H 'Content-Type: application/json' -d "$body" "$LINE_SERVICE_URL/v1/device/sessions/$sid")
c2=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" -H 'Content-Type: application/json' -d "$body" "$LINE_SERVICE_URL/v1/device/sessions/$sid")
[ "$c1" = 200 ] && [ "$c2" = 409 ] && pass "a step taken twice: $c1 then $c2" || fail "a step taken twice: $c1 then $c2"
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" -H 'Content-Type: application/json' \
  -d '{"chip_id":"0000000000000000000A"}' "$LINE_SERVICE_URL/v1/device/sessions")
[ "$code" = 404 ] && pass "unknown chip -> 404" || fail "unknown chip -> $code"
# Device 1's second session after device 0's: served as well (its record fetched from the public DB once).
"$DEV" service-agent --dir "$(ddir 1)" --service "$LINE_SERVICE_URL" --ca "$CA" >"$work/session1.json" 2>&1 &&
  pass "device 1 served (no jobs)" || fail "device 1: $(cat "$work/session1.json")"

# No key bytes of the device in the service's log or database.
"$LINE_BIN/keyline-test-unseal" "$(ddir 0)" >"$work/secrets.txt"
psql "$LINE_SERVICE_DB" -tAc "SELECT t::text FROM device t UNION ALL SELECT t::text FROM job t UNION ALL SELECT t::text FROM session_log t" >"$work/db.txt"
leaks=0
while read -r dgi form value; do
  [ -n "$value" ] || continue
  for f in "$LINE_DIR/logs/service.log" "$LINE_DIR/logs/service.out" "$work/db.txt"; do
    if grep -qiF -- "$value" "$f"; then leaks=$((leaks + 1)); echo "leak of $dgi ($form) in $f"; fi
  done
done <"$work/secrets.txt"
[ "$leaks" -eq 0 ] && [ -s "$work/secrets.txt" ] && pass "no device secret in the service log or DB ($(wc -l <"$work/secrets.txt") values)" ||
  fail "$leaks leaks"

# The token's masters and code-signing key: never extractable (pkcs11-tool reads the attributes).
pkcs11-tool --module "$(cat "$LINE_DIR/hsm/module")" --token-label "$(cat "$LINE_DIR/hsm/label")" --login \
  --pin "$(cat "$LINE_DIR/hsm/user.pin")" --list-objects --type secrkey >"$work/objects.txt" 2>/dev/null || true
if grep -A8 "label: *keyline-master" "$work/objects.txt" | grep -q "Access:.*never extractable"; then pass "keyline-master never extractable"
else fail "keyline-master attributes: $(grep -A8 'keyline-master' "$work/objects.txt" | tr '\n' ' ')"; fi

[ "$failures" -eq 0 ] && echo "e2e.service: all passed" || { echo "e2e.service: $failures failed"; exit 1; }
