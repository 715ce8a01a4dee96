#!/usr/bin/env bash
# Issue #14/#16, the master rolled to version 2 end to end (docs/custody.md "Roll", docs/service.md "Key
# derivation"): on one line (scripts/lib/line.sh), device 0 is personalized before `keys roll master`,
# device 1 after. Device 1's package header says version 2 (its SCP03 KVN), the journal and the secret DB
# record 2, its communication key is AES-256-ECB(master v2, SHA-256("keyline/comm/v2" || chip ID)) (its
# check value is what `keys check --chip` derives for its chip, not for device 0's chip), and
# keyline-service on the station's token serves device 0 with KVN 1 (legacy) and device 1 with KVN 2. The
# service answers TLS with its own certificate (service-tls.pem from `keys init`), not the KPS's. Device 2's
# claim crashes after STORE DATA before the roll (keyline-station-faulty) and resumes after it: it stays at
# version 1 (the journal's), its secret DB check value is its v1 key's, and the service serves it with KVN 1.
# Usage: service_roll_e2e.sh WORKDIR   (LINE_BIN = directory holding the keyline-* programs)
set -uo pipefail

work=${1:?usage: service_roll_e2e.sh WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
# shellcheck source=../../../scripts/lib/service.sh
source "$top/scripts/lib/service.sh"
trap line_down EXIT
rm -rf "$work"
mkdir -p "$work"

fails=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
checke() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

line_up "$work/line" 3 || exit 1
ST="$LINE_BIN/keyline-station"
DEV="$LINE_BIN/keyline-device"
CA="$LINE_DIR/pki/tls-ca.pem"
all=("${LINE_DEVICES[@]}")
ddir() { echo "${LINE_DEVICE_DIRS[$1]}"; }
personalize_one() {
  LINE_DEVICES=("${all[$1]}")
  line_personalize >"$work/personalize-$1.json" 2>"$work/personalize-$1.err"
  LINE_DEVICES=("${all[@]}")
}
chip_of() { sed -n 's/.*"chip_id":"\([0-9A-F]*\)".*/\1/p' "$work/personalize-$1.json" | head -n1; }
imei_of() { "$DEV" status --dir "$(ddir "$1")" | awk '$1 == "imei" {print $2}'; }
# `boot` prints the KVN the package header (or a rotation) gave the device.
kvn_of() { "$DEV" boot --dir "$(ddir "$1")" | awk '$1 == "kvn" {print $2}'; }
sql_of() { line_station_sql "SELECT $1 FROM $2 WHERE chip_id = '$3'${4:+ AND $4}"; }
# core::key_check_value: the first 3 bytes of AES-256-ECB(key, 16 zero bytes), of the key the device holds.
device_kcv() {
  local key
  key=$("$LINE_BIN/keyline-test-unseal" "$(ddir "$1")" | awk '$1 == "8103" && $2 == "hex" {print $3}')
  head -c 16 /dev/zero | openssl enc -aes-256-ecb -K "$key" -nopad 2>/dev/null | head -c 3 | od -An -tx1 | tr -d ' \n'
}
lower() { tr 'A-F' 'a-f'; }

personalize_one 0
checke "device 0 personalized before the roll" 'grep -q "\"done\":true" "$work/personalize-0.json"'
rc=0
KEYLINE_STATION_CRASH_AT=store "$LINE_BIN/keyline-station-faulty" personalize --json --device "${all[2]}" \
  >"$work/crash-2.out" 2>"$work/crash-2.err" || rc=$?
c2=$("$DEV" status --dir "$(ddir 2)" | awk '$1 == "chip_id" {print $2}')
checke "device 2: the station died after STORE DATA, its claim issued at version 1" \
  '[ "$rc" -ge 128 ] && [ "$(sql_of state journal.device "$c2" "state <> '"'void'"'")" = issued ] &&
   [ "$(sql_of master_version journal.device "$c2" "state <> '"'void'"'")" = 1 ]'
"$ST" keys roll master >"$work/roll.out" 2>&1
checke "keys roll master: keyline-master-v2, AES-256 derive only" \
  'grep -q "generated keyline-master-v2 (master version 2: AES-256, derive only" "$work/roll.out"'
personalize_one 1
checke "device 1 personalized after the roll" 'grep -q "\"done\":true" "$work/personalize-1.json"'
c0=$(chip_of 0)
c1=$(chip_of 1)
personalize_one 2
checke "device 2 resumed after the roll and done" 'grep -q "\"done\":true" "$work/personalize-2.json"'
kcv2=$(sql_of comm_key_kcv secret.device "$c2" | lower)
checke "the resumed claim stays at version 1 (secret DB, device KVN) and its check value is its device's key" \
  '[ "$(sql_of master_version secret.device "$c2")" = 1 ] && [ "$(kvn_of 2)" = 1 ] && [ -n "$kcv2" ] &&
   [ "$(device_kcv 2)" = "$kcv2" ]'

checke "device 0's package header says version 1, device 1's says 2 (their SCP03 KVN)" \
  '[ "$(kvn_of 0)" = 1 ] && [ "$(kvn_of 1)" = 2 ]'
checke "the secret DB records 1 for device 0 and 2 for device 1" \
  '[ "$(sql_of master_version secret.device "$c0")" = 1 ] && [ "$(sql_of master_version secret.device "$c1")" = 2 ]'
checke "the journal records 2 for device 1" \
  '[ "$(sql_of master_version journal.device "$c1" "state <> '"'void'"'")" = 2 ]'
kcv1=$(sql_of comm_key_kcv secret.device "$c1" | lower)
checke "device 1 holds the comm key the secret DB's check value names" '[ -n "$kcv1" ] && [ "$(device_kcv 1)" = "$kcv1" ]'
"$ST" keys check --imei "$(imei_of 1)" --chip "$c1" --version 2 >"$work/check-1.out" 2>&1
"$ST" keys check --imei "$(imei_of 1)" --chip "$c0" --version 2 >"$work/check-other.out" 2>&1
"$ST" keys check --imei "$(imei_of 1)" --version 1 >"$work/check-v1.out" 2>&1
got() { awk '{print $NF}' "$1" | lower; }
checke "keys check derives device 1's key from its chip ID with v2; another chip's ID or v1 derive another" \
  '[ "$(got "$work/check-1.out")" = "$kcv1" ] && [ "$(got "$work/check-other.out")" != "$kcv1" ] &&
   [ -n "$(got "$work/check-other.out")" ] && [ "$(got "$work/check-v1.out")" != "$kcv1" ]'

service_up || { echo "FAIL keyline-service did not start"; exit 1; }
subject=$(openssl s_client -connect "${LINE_SERVICE_URL#https://}" -CAfile "$CA" </dev/null 2>/dev/null |
  openssl x509 -noout -subject 2>/dev/null)
checke "keyline-service answers TLS with its own certificate (CN keyline-service)" \
  'grep -q "keyline-service" <<<"$subject" && [ -s "$LINE_DIR/pki/service-tls.pem" ]'
for i in 0 1 2; do
  rc=0
  "$DEV" service-agent --dir "$(ddir "$i")" --service "$LINE_SERVICE_URL" --ca "$CA" >"$work/session-$i.json" \
    2>"$work/session-$i.err" || rc=$?
  echo "(device $i session, exit $rc: $(head -c 200 "$work/session-$i.json"))"
done
checke "keyline-service serves device 0 (made before the roll) with KVN 1" \
  'grep -q "\"ok\":true" "$work/session-0.json" && grep -q "\"kvn\":1[,}]" "$work/session-0.json"'
checke "keyline-service serves device 1 (made after the roll) with KVN 2" \
  'grep -q "\"ok\":true" "$work/session-1.json" && grep -q "\"kvn\":2[,}]" "$work/session-1.json"'
checke "keyline-service serves device 2 (resumed after the roll) with KVN 1" \
  'grep -q "\"ok\":true" "$work/session-2.json" && grep -q "\"kvn\":1[,}]" "$work/session-2.json"'

# The v2 master on the token: sensitive, extractable only with wrap-with-trusted, CKA_DERIVE only. pkcs11-tool
# prints no CKA_WRAP_WITH_TRUSTED, so that one is read from `keys status --json`.
pkcs11-tool --module "$(cat "$LINE_DIR/hsm/module")" --token-label "$(cat "$LINE_DIR/hsm/label")" --login \
  --pin "$(cat "$LINE_DIR/hsm/user.pin")" --list-objects --type secrkey >"$work/objects.txt" 2>/dev/null || true
v2obj=$(awk '/Secret Key Object/ {p = 0} /label: *keyline-master-v2$/ {p = 1} p' "$work/objects.txt")
checke "pkcs11-tool: keyline-master-v2 is AES, usage derive only, sensitive, extractable, not never-extractable" \
  'grep -q "Usage: *derive$" <<<"$v2obj" && grep -q "Access:.*sensitive" <<<"$v2obj" &&
   grep -q "Access:.*extractable" <<<"$v2obj" && ! grep -q "never extractable" <<<"$v2obj" &&
   grep -q "AES" <<<"$(grep -B1 "label: *keyline-master-v2$" "$work/objects.txt")"'
"$ST" keys status --json >"$work/status.json" 2>&1
checke "keys status: keyline-master-v2 wrap-with-trusted" \
  'python3 - "$work/status.json" <<PY
import json, sys
k = [k for k in json.load(open(sys.argv[1]))["keys"] if k["label"] == "keyline-master-v2"][0]
sys.exit(0 if k["wrap_with_trusted"] and k["usages"] == ["derive"] and k["type"] == "AES" else 1)
PY'

echo "service roll e2e: $fails failure(s)"
[ "$fails" = 0 ]
