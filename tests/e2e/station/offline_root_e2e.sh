#!/usr/bin/env bash
# Issue #14, the station's side of the offline root: `keys init --offline-root` on a station token writes
# CSRs, keyline-ceremony signs them with the root token (its own SoftHSM directory), `keys install-cert`
# installs them, and openssl verifies the station's certificates against the root. Refused, each leaving
# the PKI directory byte for byte as it was: a certificate for another key, one from another root, a
# certificate of another profile than its key's role, a station token that made its own root. Then a device
# whose ROM trusts only the offline root is personalized (no public DB: its record waits in the outbox)
# and its identity certificate verifies with openssl through the installed Device CA.
# Environment: LINE_BIN (keyline-station, keyline-ceremony), E2E_DIR (scratch, wiped first).
set -uo pipefail
top=${KEYLINE_SOURCE_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)}
work=${E2E_DIR:?set E2E_DIR}
bin=${LINE_BIN:?set LINE_BIN}
rm -rf "$work"
mkdir -p "$work/out"
cd "$work" || exit 1

fails=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
checke() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
has() { grep -q -- "$1" "$2"; }

for t in root-hsm other-root-hsm station-hsm local-hsm; do
  "$top/scripts/hsm.sh" init "$work/$t" "$t" >/dev/null || exit 1
done
module=$(cat "$work/root-hsm/module")

cer() {  # HSMDIR CEREMONYDIR args...
  local hsm=$1 dir=$2
  shift 2
  SOFTHSM2_CONF=$hsm/softhsm2.conf "$bin/keyline-ceremony" --dir "$dir" --hsm-module "$module" \
    --token "$(basename "$hsm")" --pin-file "$hsm/user.pin" "$@" >"$work/last.out" 2>&1
  rc=$?
}
sta() {  # HSMDIR PKIDIR args...
  local hsm=$1 pki=$2
  shift 2
  SOFTHSM2_CONF=$hsm/softhsm2.conf "$bin/keyline-station" --hsm-module "$module" --token "$(basename "$hsm")" \
    --pin-file "$hsm/user.pin" --pki-dir "$pki" --station-id station-7 --channel plain "$@" >"$work/last.out" 2>&1
  rc=$?
}
st() { sta "$work/station-hsm" "$work/pki" "$@"; }
snapshot() { (cd "$work/pki" && find . -type f ! -name .keys.lock -print0 | sort -z | xargs -0 sha256sum); }

cer "$work/root-hsm" "$work/cer" init-root --subject-cn "e2e Root" --organization "e2e" --days 7300
checke "root made on the root token" '[ "$rc" = 0 ] && [ -s "$work/cer/root.pem" ]'
cer "$work/other-root-hsm" "$work/cer-other" init-root --subject-cn "e2e Root" --organization "e2e" --days 7300
checke "another root (same name) made" '[ "$rc" = 0 ]'

# --- CSRs -----------------------------------------------------------------------------------------
st keys init --offline-root --organization "e2e"
checke "keys init --offline-root succeeds" '[ "$rc" = 0 ]'
checke "device-ca.csr and station.csr written" '[ -s pki/device-ca.csr ] && [ -s pki/station.csr ]'
checke "no root key, root or Device CA certificate made on the station" \
  '[ ! -e pki/root.pem ] && [ ! -e pki/device-ca.pem ] && ! has keyline-root last.out'
SOFTHSM2_CONF=$work/station-hsm/softhsm2.conf pkcs11-tool --module "$module" --token-label station-hsm --login \
  --pin "$(cat "$work/station-hsm/user.pin")" --list-objects >objects.txt 2>/dev/null
checke "station token: Device CA and TLS keys, never extractable, no root key" \
  'has "label: *keyline-device-ca" objects.txt && has "label: *keyline-station-tls" objects.txt &&
   ! has "label: *keyline-root" objects.txt && has "never extractable" objects.txt'
openssl req -in pki/device-ca.csr -noout -verify -subject >csr1.txt 2>&1
checke "device-ca.csr self-signature verifies, CN station-7 Device CA" \
  'has "verify OK" csr1.txt && has "CN *= *station-7 Device CA" csr1.txt && has "O *= *e2e" csr1.txt'
openssl req -in pki/station.csr -noout -verify -subject >csr2.txt 2>&1
checke "station.csr verifies, CN station-7, OU keyline station" \
  'has "verify OK" csr2.txt && has "CN *= *station-7" csr2.txt && has "OU *= *keyline station" csr2.txt'
cp pki/device-ca.csr device-ca.csr.1
st keys init --offline-root --organization "e2e"
checke "a second run reuses the keys and changes nothing" \
  '[ "$rc" = 0 ] && has "nothing changed" last.out && cmp -s pki/device-ca.csr device-ca.csr.1'

# --- the ceremony signs -------------------------------------------------------------------------
cp -a cer cer-copy  # same root, its own issued/: lets the wrong-profile certificate below be made
cer "$work/root-hsm" "$work/cer" sign --csr pki/device-ca.csr --profile device-ca --out out/device-ca.pem
checke "ceremony signs device-ca" '[ "$rc" = 0 ]'
cer "$work/root-hsm" "$work/cer" sign --csr pki/station.csr --profile station --out out/station.pem
checke "ceremony signs station" '[ "$rc" = 0 ]'
cer "$work/root-hsm" "$work/cer-copy" sign --csr pki/device-ca.csr --profile code-signing --out out/ca-as-leaf.pem
checke "(a code-signing certificate for the Device CA key)" '[ "$rc" = 0 ]'
cer "$work/other-root-hsm" "$work/cer-other" sign --csr pki/device-ca.csr --profile device-ca --out out/other-root.pem
checke "(the same CSR signed by another root)" '[ "$rc" = 0 ]'
# a station certificate of the right profile for a key that is not on this station's token
sta "$work/local-hsm" "$work/pki-foreign" keys init --offline-root
cer "$work/root-hsm" "$work/cer" sign --csr pki-foreign/station.csr --profile station --out out/foreign.pem
checke "(a station certificate for another token's key)" '[ "$rc" = 0 ]'

# --- refused: nothing installed -------------------------------------------------------------------
before=$(snapshot)
refused() {  # description expected-text args...
  local what=$1 text=$2
  shift 2
  st keys install-cert --root cer/root.pem "$@"
  checke "$what" '[ "$rc" != 0 ] && has "error 4033" last.out && has "$text" last.out && [ "$(snapshot)" = "$before" ]'
}
refused "a certificate for another key: refused, naming the key, nothing installed" "neither keyline-device-ca" \
  --cert out/device-ca.pem --cert out/foreign.pem
refused "a certificate from another root: refused, nothing installed" "does not verify under the given root" \
  --cert out/other-root.pem --cert out/station.pem
refused "a leaf certificate installed as Device CA: refused, nothing installed" "is not a CA certificate" \
  --cert out/station.pem --cert out/ca-as-leaf.pem
st keys install-cert --root cer-other/root.pem --cert out/device-ca.pem
checke "the right certificate under another root given as --root: refused" \
  '[ "$rc" != 0 ] && has "does not verify under the given root" last.out && [ "$(snapshot)" = "$before" ]'
st keys install-cert --root out/station.pem --cert out/station.pem
checke "a --root that is no self-signed CA: refused" '[ "$rc" != 0 ] && [ "$(snapshot)" = "$before" ]'

# --- installed ------------------------------------------------------------------------------------
st keys install-cert --root cer/root.pem --cert out/device-ca.pem --cert out/station.pem
checke "install-cert succeeds" '[ "$rc" = 0 ]'
checke "root.pem is the offline root" 'cmp -s <(openssl x509 -in pki/root.pem -outform DER) <(openssl x509 -in cer/root.pem -outform DER)'
checke "device-ca.pem verifies against the root (openssl)" 'openssl verify -CAfile cer/root.pem pki/device-ca.pem >/dev/null'
checke "station-tls.pem verifies against the root, purpose sslclient (openssl)" \
  'openssl verify -purpose sslclient -CAfile cer/root.pem pki/station-tls.pem >/dev/null'
checke "install-cert issues the SCP11a OCE certificate from the installed Device CA (openssl)" \
  'openssl verify -partial_chain -CAfile pki/device-ca.pem pki/oce.pem >/dev/null &&
   openssl x509 -in pki/oce.pem -noout -ext keyUsage | grep -qx "    Key Agreement"'
checke "installed files are written 0644, no temp file left" \
  '[ "$(stat -c %a pki/device-ca.pem)" = 644 ] && ! ls pki | grep -q tmp-'
sta "$work/local-hsm" "$work/pki-local" keys init
checke "(a single-token station made with keys init)" '[ "$rc" = 0 ]'
sta "$work/local-hsm" "$work/pki-local" keys install-cert --root cer/root.pem --cert out/device-ca.pem
checke "install-cert on a token holding its own root: refused (4030)" '[ "$rc" != 0 ] && has "error 4030" last.out'

# --- a device personalized by the station under the offline root -----------------------------------
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  "$top/scripts/pg.sh" stop "$work/pg" >/dev/null 2>&1
}
trap cleanup EXIT
"$top/scripts/pg.sh" start "$work/pg" >/dev/null 2>&1 || { fail "PostgreSQL did not start"; exit 1; }
ci=$(cat "$work/pg/conninfo")
psql "$ci" -qc "CREATE DATABASE keyline_station" >/dev/null
export KEYLINE_STATION_DB=${ci/dbname=postgres/dbname=keyline_station}
st pool generate --tac 35780502 --count 2
checke "(pool of IMEIs)" '[ "$rc" = 0 ]'
"$bin/keyline-device" make --dir fleet --count 1 --rom-ca cer/root.pem >make.log 2>&1
"$bin/keyline-device" serve --fleet fleet --listen 127.0.0.1:0 >fleet.out 2>fleet.log &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening' fleet.out && break; sleep 0.1; done
read -r _ addr _ ddir < <(grep '^listening' fleet.out)
st personalize --json --device "$addr"
cp last.out personalize.out
# No public DB in this test: the device is personalized and its record waits in the outbox (4021).
checke "a device whose ROM trusts only the offline root is personalized (record in the outbox)" \
  'has "\"in_outbox\":true" personalize.out && has "\"step\":\"publish\"" personalize.out'
chip=$(sed -n 's/.*"chip_id":"\([0-9A-F]*\)".*/\1/p' personalize.out | head -n1)
psql "$KEYLINE_STATION_DB" -tAc "SELECT encode(identity_cert, 'base64') FROM journal.device WHERE chip_id = '$chip'" |
  tr -d '\n' | base64 -d >identity.der 2>/dev/null
checke "its identity certificate verifies with openssl: offline root -> installed Device CA -> device" \
  '[ -s identity.der ] && openssl x509 -inform DER -in identity.der -out identity.pem &&
   [ "$(openssl verify -CAfile cer/root.pem -untrusted pki/device-ca.pem identity.pem 2>&1)" = "identity.pem: OK" ]'
checke "and not under the other root" \
  '! openssl verify -CAfile cer-other/root.pem -untrusted pki/device-ca.pem identity.pem >/dev/null 2>&1'
echo "offline root e2e: $fails failure(s)"
[ "$fails" = 0 ]
