#!/usr/bin/env bash
# Issue #14, `keys roll device-ca` and `keys roll station-tls` (docs/custody.md, "Roll") on a whole line
# (scripts/lib/line.sh): device 0 personalized before the roll, device 1 after. Each certificate verifies
# with openssl against the root through its own Device CA version and not through the other, the data
# package of each names its own CA, both publish (device 1 through the rolled station TLS key), both are
# wiped and restored. A roll without a station database is refused and makes no key; the rolls are audited.
# The replaced station TLS certificate (its key kept on the token) still publishes until its entry, from
# retired-station-certs.txt (written by the roll on its own root, by install-cert under the ceremony), reaches the public DB's
# --station-deny file (here KEYLINE_BACKUPDB_STATION_DENY, watched by the running server): then 403, the
# new certificate still 200, and the public DB's log names which certificate each publish came with.
# Under the offline root (line.sh's ceremony) the roll writes a CSR, the ceremony signs it and install-cert
# installs it; a certificate for the old key given as the roll's is refused.
# The line's root: ceremony (default: line.sh's LINE_ROOT=ceremony, the root token apart, which this test
# also checks) or station (plain `keys init`: the station's own root certifies the new versions at once).
# Usage: roll_e2e.sh WORKDIR [ceremony|station]   (LINE_BIN = directory holding the keyline-* programs)
set -uo pipefail
work=${1:?usage: roll_e2e.sh WORKDIR [ceremony|station]}
export LINE_ROOT=${2:-ceremony}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
trap line_down EXIT
rm -rf "$work"
mkdir -p "$work/certs"
# The public DB line.sh starts enforces this list from the start and re-reads it when it changes.
export KEYLINE_BACKUPDB_STATION_DENY=$work/station-deny.txt
echo "# station certificates that may no longer publish" >"$KEYLINE_BACKUPDB_STATION_DENY"

fails=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
checke() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

line_up "$work/line" 2 || exit 1
ST="$LINE_BIN/keyline-station"
DEV="$LINE_BIN/keyline-device"
REC="$LINE_BIN/keyline-recovery"
pki=$LINE_DIR/pki
export KEYLINE_LOG_KEY_FILE=$LINE_LOG_KEY_FILE KEYLINE_LOG_STATE="$work/log-state"
all=("${LINE_DEVICES[@]}")
module=$(cat "$LINE_DIR/hsm/module")
objects() {
  pkcs11-tool --module "$module" --token-label "$(cat "$LINE_DIR/hsm/label" 2>/dev/null || echo keyline)" --login \
    --pin "$(cat "$LINE_DIR/hsm/user.pin")" --list-objects 2>/dev/null
}
count_keys() { objects | grep -c "Key Object"; }
personalize_one() {  # index -> the JSON line
  LINE_DEVICES=("${all[$1]}")
  line_personalize >"$work/personalize-$1.json" 2>"$work/personalize-$1.err"
  LINE_DEVICES=("${all[@]}")
}
chip_of() { sed -n 's/.*"chip_id":"\([0-9A-F]*\)".*/\1/p' "$work/personalize-$1.json" | head -n1; }
fetch_cert() {  # index -> certs/identity-N.pem from the public DB
  curl -s -o "$work/certs/identity-$1.der" --cacert "$pki/tls-ca.pem" \
    "$LINE_BACKUPDB_URL/v1/records/$(chip_of "$1")/certificate" &&
    openssl x509 -inform DER -in "$work/certs/identity-$1.der" -out "$work/certs/identity-$1.pem" 2>/dev/null
}
# Under the offline root, the ceremony signs the roll's CSR and the station installs it.
ceremony_install() {  # csr-file profile
  local out=$work/certs/$(basename "$1" .csr).pem
  line_ceremony sign --csr "$pki/$1" --profile "$2" --out "$out" >"$work/sign-$1.log" 2>&1 &&
    "$ST" keys install-cert --root "$LINE_CEREMONY_DIR/root.pem" --cert "$out" >"$work/install-$1.log" 2>&1
}
offline() { [ -n "${LINE_CEREMONY_DIR:-}" ]; }

if offline; then
  tokendir=$(sed -n 's/^directories.tokendir *= *//p' "$SOFTHSM2_CONF")
  checke "the station's SoftHSM configuration names only its own token directory, not the root token's" \
    '[ "$(grep -c tokendir "$SOFTHSM2_CONF")" = 1 ] && [ "$tokendir" = "$LINE_DIR/hsm/tokens" ] &&
     ! ls "$tokendir" | grep -qxF "$(ls "$LINE_ROOT_HSM/tokens")"'
  checke "the station's token list has no root key and its processes see no root token" \
    '! objects | grep -q "label: *keyline-root" && ! softhsm2-util --show-slots 2>/dev/null | grep -q keyline-root-token'
  checke "the root token holds the root key (keyline-ceremony's)" \
    'SOFTHSM2_CONF=$LINE_ROOT_HSM/softhsm2.conf softhsm2-util --show-slots 2>/dev/null | grep -q keyline-root-token'
fi

# --- device 0, before the rolls -----------------------------------------------------------------------
personalize_one 0
checke "device 0 personalized and published before the roll" 'grep -q "\"done\":true" "$work/personalize-0.json"'
cp "$pki/device-ca.pem" "$work/certs/ca-before.pem"
cp "$pki/station-tls.pem" "$work/certs/tls-before.pem"

before=$(count_keys)
KEYLINE_STATION_DB="" "$ST" keys roll device-ca >"$work/nodb.out" 2>&1
rc=$?
checke "keys roll device-ca without a database: refused, no key made" \
  '[ "$rc" != 0 ] && grep -q "none is configured" "$work/nodb.out" && [ "$(count_keys)" = "$before" ]'

# --- the rolls ----------------------------------------------------------------------------------------
"$ST" keys roll device-ca >"$work/roll-ca.out" 2>&1
checke "keys roll device-ca: keyline-device-ca-v2 beside the old one" \
  'grep -q "generated keyline-device-ca-v2" "$work/roll-ca.out" && objects | grep -q "label: *keyline-device-ca-v2"'
checke "its CKA_ID is the role byte 02 then the version (4 bytes big-endian)" \
  'objects | grep -A3 "label: *keyline-device-ca-v2" | grep -q "ID: *0200000002"'
"$ST" keys roll station-tls >"$work/roll-tls.out" 2>&1
checke "keys roll station-tls: keyline-station-tls-v2, CKA_ID 0400000002 (no two pairs share one)" \
  'grep -q "generated keyline-station-tls-v2" "$work/roll-tls.out" && objects | grep -A3 "label: *keyline-station-tls-v2" | grep -q "ID: *0400000002"'
if offline; then
  checke "under the offline root the roll writes CSRs and changes no certificate yet" \
    '[ -s "$pki/device-ca-v2.csr" ] && [ -s "$pki/station-v2.csr" ] && cmp -s "$pki/device-ca.pem" "$work/certs/ca-before.pem"'
  "$ST" keys install-cert --root "$LINE_CEREMONY_DIR/root.pem" --cert "$work/certs/ca-before.pem" >"$work/install-old.log" 2>&1
  checke "install-cert of the old Device CA's certificate as the roll's: refused" \
    '[ $? != 0 ] && grep -q "refused" "$work/install-old.log"'
  ceremony_install device-ca-v2.csr device-ca
  checke "the ceremony signs the roll's Device CA CSR, install-cert installs it" '[ $? = 0 ]'
  ceremony_install station-v2.csr station
  checke "the ceremony signs the roll's station CSR, install-cert installs it" '[ $? = 0 ]'
fi
checke "device-ca.pem is the new version's, the old one kept as device-ca-v1.pem" \
  '! cmp -s "$pki/device-ca.pem" "$work/certs/ca-before.pem" && cmp -s "$pki/device-ca-v1.pem" "$work/certs/ca-before.pem"'
checke "the new Device CA is named apart (CN ... v2) and verifies against the root" \
  'openssl x509 -in "$pki/device-ca.pem" -noout -subject | grep -q "Device CA v2" &&
   openssl verify -CAfile "$pki/root.pem" "$pki/device-ca.pem" >/dev/null'
checke "station-tls.pem holds the new TLS key (it differs), the old kept as station-tls-v1.pem" \
  '! cmp -s "$pki/station-tls.pem" "$work/certs/tls-before.pem" && cmp -s "$pki/station-tls-v1.pem" "$work/certs/tls-before.pem"'
if ! offline; then
  cp "$pki/device-ca.pem" "$work/certs/ca-rolled.pem"
  cp "$pki/station-tls.pem" "$work/certs/tls-rolled.pem"
  "$ST" keys init >"$work/init-again.out" 2>&1
  checke "keys init after the rolls keeps the rolled certificates (does not certify version 1 again)" \
    '[ $? = 0 ] && cmp -s "$pki/device-ca.pem" "$work/certs/ca-rolled.pem" && cmp -s "$pki/station-tls.pem" "$work/certs/tls-rolled.pem"'
fi
rows=$(line_station_sql "SELECT string_agg(event, ',' ORDER BY id) FROM journal.audit WHERE event LIKE 'custody.roll%'")
checke "both rolls audited before and after ($rows)" \
  '[ "$rows" = "custody.roll.begin,custody.roll.done,custody.roll.begin,custody.roll.done" ]'

# --- device 1, after the rolls: the line (its lanes publish with the rolled TLS key) ------------------------
grep '^listening' "$LINE_DIR/logs/fleet.out" | sed -n 2p >"$work/fleet-1.txt"
"$ST" run --fleet "$work/fleet-1.txt" --count 1 --progress plain --publish-wait 10 >"$work/run-1.log" 2>&1
rc=$?
checke "device 1 personalized by keyline-station run after the rolls and published through the rolled TLS key" \
  '[ "$rc" = 0 ] && grep -Eq "\| done \(published\) +\| +1 \|" "$work/run-1.log"'
[ "$rc" = 0 ] || cat "$work/run-1.log"
awk '{print "{\"chip_id\":\"" $3 "\"}"}' "$work/fleet-1.txt" >"$work/personalize-1.json"
fetch_cert 0 && fetch_cert 1
c0=$work/certs/identity-0.pem c1=$work/certs/identity-1.pem
checke "device 0 verifies with openssl against the root through Device CA v1" \
  '[ "$(openssl verify -CAfile "$pki/root.pem" -untrusted "$pki/device-ca-v1.pem" "$c0" 2>&1)" = "$c0: OK" ]'
checke "device 1 verifies with openssl against the root through Device CA v2" \
  '[ "$(openssl verify -CAfile "$pki/root.pem" -untrusted "$pki/device-ca.pem" "$c1" 2>&1)" = "$c1: OK" ]'
checke "neither verifies through the other version (the chains differ)" \
  '! openssl verify -CAfile "$pki/root.pem" -untrusted "$pki/device-ca.pem" "$c0" >/dev/null 2>&1 &&
   ! openssl verify -CAfile "$pki/root.pem" -untrusted "$pki/device-ca-v1.pem" "$c1" >/dev/null 2>&1'
cat "$pki/device-ca-v1.pem" "$pki/device-ca.pem" >"$work/certs/both-cas.pem"
checke "with both versions as intermediates, openssl picks the right one for each" \
  'openssl verify -CAfile "$pki/root.pem" -untrusted "$work/certs/both-cas.pem" "$c0" "$c1" >/dev/null 2>&1'

# --- both restore -----------------------------------------------------------------------------------------
for i in 0 1; do
  "$DEV" boot --dir "${LINE_DEVICE_DIRS[$i]}" >"$work/before-$i.txt" 2>&1
  "$DEV" wipe-flash --dir "${LINE_DEVICE_DIRS[$i]}" >/dev/null
  "$REC" restore --device "${all[$i]}" --db "$LINE_BACKUPDB_URL" --ca "$pki/tls-ca.pem" --trust "$pki/root.pem" \
    >"$work/restore-$i.out" 2>"$work/restore-$i.err"
  rc=$?
  "$DEV" boot --dir "${LINE_DEVICE_DIRS[$i]}" >"$work/after-$i.txt" 2>&1
  checke "device $i (made $([ "$i" = 0 ] && echo before || echo after) the roll) restores and boots the same identity" \
    '[ "$rc" = 0 ] && cmp -s "$work/before-$i.txt" "$work/after-$i.txt"'
  [ "$rc" = 0 ] || cat "$work/restore-$i.err"
done
# --- the replaced station TLS certificate: refused once the public DB lists it ------------------------------
fp_of() { openssl x509 -in "$1" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g'; }
fp1=$(fp_of "$pki/station-tls-v1.pem") fp2=$(fp_of "$pki/station-tls.pem")
checke "the roll keeps keyline-station-tls on the token and says why" \
  'objects | grep -q "label: *keyline-station-tls$" && grep -q "keyline-station-tls stays on the token" "$work/roll-tls.out"'
retired=$pki/retired-station-certs.txt
if offline; then
  # install-cert, not the roll, replaces the certificate: the roll names the one it will replace.
  entry=$(sed -n 's/.*add the replaced one (\(sha256:[0-9A-F]*\)).*/\1/p' "$work/roll-tls.out")
  checke "under the offline root the roll names the certificate install-cert replaces (sha256:$fp1)" \
    '[ "$entry" = "sha256:$fp1" ]'
  checke "install-cert wrote the replaced certificate's entry to retired-station-certs.txt (0644)" \
    '[ "$(grep -o "^sha256:[0-9A-F]*" "$retired" 2>/dev/null)" = "sha256:$fp1" ] && [ "$(stat -c %a "$retired")" = 644 ]'
else
  entry=$(grep -o '^sha256:[0-9A-F]*' "$retired" 2>/dev/null)
  checke "retired-station-certs.txt (0644) holds the replaced certificate's entry, the roll says to deny it" \
    '[ "$entry" = "sha256:$fp1" ] && [ "$(stat -c %a "$retired")" = 644 ] &&
     grep -q "sha256:$fp1" "$work/roll-tls.out" && grep -q "station-deny" "$work/roll-tls.out"'
fi
chip0=$(chip_of 0)
curl -s -o "$work/record-0.json" --cacert "$pki/tls-ca.pem" "$LINE_BACKUPDB_URL/v1/records/$chip0"
pin=$(cat "$LINE_DIR/hsm/user.pin") token=$(cat "$LINE_DIR/hsm/label" 2>/dev/null || echo keyline)
publish_with() {  # certificate-file key-label -> HTTP status; body in $work/publish.body
  OPENSSL_CONF=/dev/null PKCS11_MODULE_PATH=$module curl -s -o "$work/publish.body" -w '%{http_code}' \
    --cacert "$pki/tls-ca.pem" --engine pkcs11 --key-type ENG \
    --key "pkcs11:token=$token;object=$2;type=private?pin-value=$pin" --cert "$1" \
    -H 'Content-Type: application/json' --data-binary @"$work/record-0.json" "$LINE_BACKUPDB_URL/v1/records"
}
code=$(publish_with "$pki/station-tls-v1.pem" keyline-station-tls)
checke "before the list names it, the replaced certificate still publishes (identical re-publish, HTTP $code)" \
  '[ "$code" = 200 ]'
records=$(line_public_sql "SELECT count(*) FROM records")
if [ -n "$entry" ]; then
  cat "$retired" >>"$KEYLINE_BACKUPDB_STATION_DENY"
fi
sleep 1.2  # the public DB looks at the file at most once a second
code=$(publish_with "$pki/station-tls-v1.pem" keyline-station-tls)
checke "once listed, the replaced certificate is refused 403 certificate-denied, nothing stored (HTTP $code)" \
  '[ "$code" = 403 ] && grep -q "/problems/certificate-denied" "$work/publish.body" &&
   [ "$(line_public_sql "SELECT count(*) FROM records")" = "$records" ]'
code=$(publish_with "$pki/station-tls.pem" keyline-station-tls-v2)
checke "the rolled certificate still publishes (HTTP $code)" '[ "$code" = 200 ]'
sleep 0.2
grep '"route":"publish"' "$LINE_DIR/logs/backupdb.log" >"$work/publish-lines.log"
checke "the public DB's publish lines name the certificate: v1 ($fp1) 200 then 403, v2 ($fp2) 200" \
  'grep "\"status\":200," "$work/publish-lines.log" | grep -q "identical re-publish by station .* sha256 $fp1\"" &&
   grep "\"status\":403," "$work/publish-lines.log" | grep -q "sha256 $fp1 is on the deny list" &&
   grep "\"status\":200," "$work/publish-lines.log" | grep -q "sha256 $fp2\""'
echo "roll e2e: $fails failure(s)"
[ "$fails" = 0 ]
