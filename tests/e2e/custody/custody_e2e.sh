#!/usr/bin/env bash
# Issue #14, custody of the master (docs/custody.md): three station tokens A, B, C under one offline root
# (its own token), each station its own database. A rolls the master (version 2: AES-256, derive only, extractable
# only wrapped under a trusted key), B asks for it (receive-init), A's Security Officer trusts B's receiving key, A's user
# wraps, B imports: both derive the same v2 communication key for one chip. Refused, each importing nothing:
# the file given to C (a manifest for another serial), a changed byte in the wrapped key or in the manifest,
# the same file twice (a replay), another station's certificate as --from, a mirror file through `keys import`,
# version 1, a send before the SO trusted, every custody step without a database. pkcs11-tool on every token:
# private and secret keys sensitive, signing keys never extractable, no usage beyond the role. A device
# personalized before the roll: its secret DB check value is version 1's; one after: version 2 (secret DB and journal), its chip's v2 key.
# Environment: LINE_BIN (keyline-station, keyline-ceremony, keyline-device), E2E_DIR (scratch, wiped first).
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

for t in root-hsm a-hsm b-hsm c-hsm; do
  "$top/scripts/hsm.sh" init "$work/$t" "$t" >/dev/null || exit 1
done
module=$(cat "$work/root-hsm/module")

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  "$top/scripts/pg.sh" stop "$work/pg" >/dev/null 2>&1
}
trap cleanup EXIT
"$top/scripts/pg.sh" start "$work/pg" >/dev/null 2>&1 || { fail "PostgreSQL did not start"; exit 1; }
ci=$(cat "$work/pg/conninfo")
for s in a b c; do psql "$ci" -qc "CREATE DATABASE keyline_$s" >/dev/null; done
db() { echo "${ci/dbname=postgres/dbname=keyline_$1}"; }

cer() {  # args...: the ceremony on the root token
  SOFTHSM2_CONF=$work/root-hsm/softhsm2.conf "$bin/keyline-ceremony" --dir "$work/cer" --hsm-module "$module" \
    --token root-hsm --pin-file "$work/root-hsm/user.pin" "$@" >"$work/last.out" 2>&1
  rc=$?
}
# st a|b|c args...: station a, b or c with its token, PKI directory and database (NODB=1: no database)
st() {
  local s=$1
  shift
  local d
  d=$(db "$s")
  [ -n "${NODB:-}" ] && d=""
  SOFTHSM2_CONF=$work/$s-hsm/softhsm2.conf KEYLINE_STATION_DB=$d "$bin/keyline-station" --hsm-module "$module" \
    --token "$s-hsm" --pin-file "$work/$s-hsm/user.pin" --pki-dir "$work/pki-$s" --station-id "station-$s" --channel plain "$@" \
    >"$work/last.out" 2>&1
  rc=$?
}
objects() {  # s: pkcs11-tool's list of the token's objects
  SOFTHSM2_CONF=$work/$1-hsm/softhsm2.conf pkcs11-tool --module "$module" --token-label "$1-hsm" --login \
    --pin "$(cat "$work/$1-hsm/user.pin")" --list-objects 2>/dev/null
}
count_keys() { objects "$1" | grep -c "Key Object"; }
refused() { [ "$rc" != 0 ] && has "$1" last.out; }

cer init-root --subject-cn "custody Root" --organization "e2e" --days 7300
checke "(offline root made)" '[ "$rc" = 0 ]'
for s in a b c; do
  st "$s" keys init --offline-root --organization e2e || true
  cer sign --csr "pki-$s/device-ca.csr" --profile device-ca --out "out/$s-device-ca.pem"
  cer sign --csr "pki-$s/station.csr" --profile station --out "out/$s-station.pem"
  st "$s" keys install-cert --root cer/root.pem --cert "out/$s-device-ca.pem" --cert "out/$s-station.pem"
  checke "(station $s under the offline root)" '[ "$rc" = 0 ]'
done

# --- no database: refused, nothing made --------------------------------------------------------------
before=$(count_keys a)
NODB=1 st a keys roll master
checke "keys roll master without a database: refused, says so, no key made" \
  'refused "none is configured" && [ "$(count_keys a)" = "$before" ]'
NODB=1 st b keys mirror receive-init --out out/nodb.req
checke "receive-init without a database: refused, no file" 'refused "none is configured" && [ ! -e out/nodb.req ]'

# --- a device personalized before the roll ----------------------------------------------------------
st a pool generate --tac 35780502 --count 4
"$bin/keyline-device" make --dir fleet --count 2 --rom-ca cer/root.pem >make.log 2>&1
"$bin/keyline-device" serve --fleet fleet --listen 127.0.0.1:0 >fleet.out 2>fleet.log &
pids+=($!)
for _ in $(seq 100); do [ "$(grep -c '^listening' fleet.out 2>/dev/null)" = 2 ] && break; sleep 0.1; done
read -r _ addr _ _ < <(grep '^listening' fleet.out | sed -n 1p)
read -r _ addr_after _ _ < <(grep '^listening' fleet.out | sed -n 2p)
st a personalize --json --device "$addr"
cp last.out personalize.out
chip=$(sed -n 's/.*"chip_id":"\([0-9A-F]*\)".*/\1/p' personalize.out | head -n1)
read -r imei0 kcv0 < <(psql "$(db a)" -tAF' ' -c "SELECT imei, comm_key_kcv FROM secret.device WHERE chip_id = '$chip'")
checke "(a device personalized on A before the roll: secret DB row)" '[ -n "${imei0:-}" ] && [ -n "${kcv0:-}" ]'
st a keys check --imei "$imei0" --version 1
checke "its secret DB check value is master version 1's" 'has "kcv ${kcv0^^}" last.out || has "kcv ${kcv0,,}" last.out'
mv0=$(psql "$(db a)" -tAc "SELECT master_version FROM secret.device WHERE chip_id = '$chip'")
checke "its secret DB row records master version 1" '[ "$mv0" = 1 ]'

# --- roll ---------------------------------------------------------------------------------------------
st a keys roll master
checke "keys roll master on A: version 2" '[ "$rc" = 0 ] && has "keyline-master-v2" last.out'
st a keys status --json
cp last.out a-status.json
checke "keys status: v2 AES, sensitive, extractable only with wrap-with-trusted, derive only; v1 never extractable" \
  'python3 - a-status.json <<PY
import json, sys
keys = {k["label"]: k for k in json.load(open(sys.argv[1]))["keys"] if k["class"] == "secret"}
v2, v1 = keys["keyline-master-v2"], keys["keyline-master"]
ok = v2["version"] == 2 and v2["type"] == "AES" and v2["sensitive"] and v2["extractable"] and v2["wrap_with_trusted"]
ok = ok and v2["usages"] == ["derive"]
ok = ok and v1["version"] == 1 and not v1["extractable"] and v1["never_extractable"]
sys.exit(0 if ok else 1)
PY'
st a keys check --imei "$imei0" --version 1
k1=$(awk '{print $NF}' last.out)
st a keys check --imei "$imei0"
checke "keys check of version 2 without --chip: refused (v2 derives from the chip ID)" 'refused "give --chip"'
st a keys check --imei "$imei0" --chip "$chip"
k2=$(awk '{print $NF}' last.out)
checke "after the roll the newest version is 2, and the earlier device still derives its own (v1) key" \
  'has "^version 2 " last.out && [ "$k1" != "$k2" ] && [ "${k1,,}" = "${kcv0,,}" ]'
# A device personalized after the roll gets version 2 (the line takes the newest version at its start).
st a personalize --json --device "$addr_after"
chip1=$(sed -n 's/.*"chip_id":"\([0-9A-F]*\)".*/\1/p' last.out | head -n1)
read -r imei1 kcv1 mv1 < <(psql "$(db a)" -tAF' ' -c "SELECT imei, comm_key_kcv, master_version FROM secret.device WHERE chip_id = '$chip1'")
jmv1=$(psql "$(db a)" -tAc "SELECT master_version FROM journal.device WHERE chip_id = '$chip1' AND state <> 'void'")
checke "a device personalized after the roll: its secret DB row and journal row record master version 2" \
  '[ "${mv1:-}" = 2 ] && [ "${jmv1:-}" = 2 ]'
st a keys check --imei "${imei1:-0}" --chip "${chip1:-0}" --version 2
checke "its secret DB check value is version 2's for its chip" \
  '[ -n "${kcv1:-}" ] && (has "kcv ${kcv1^^}" last.out || has "kcv ${kcv1,,}" last.out)'
st a keys check --imei "${imei1:-0}" --chip "$chip" --version 2
checke "and another chip's ID with the same IMEI derives another key (v2 binds the chip)" \
  '[ "$rc" = 0 ] && ! has "kcv ${kcv1^^}" last.out && ! has "kcv ${kcv1,,}" last.out'
roll_audit=$(psql "$(db a)" -tAc "SELECT string_agg(event, ',' ORDER BY id) FROM journal.audit WHERE event LIKE 'custody.roll%'")
checke "the roll is audited before and after" '[ "$roll_audit" = "custody.roll.begin,custody.roll.done" ]'

# --- dual control: B asks, A's SO trusts, A's user sends ---------------------------------------------
st b keys mirror receive-init --out out/b.req
checke "B: receive-init writes a request naming B's serial" '[ "$rc" = 0 ] && has "^token_serial=" out/b.req'
st c keys mirror receive-init --out out/c.req
checke "(C: a request of its own)" '[ "$rc" = 0 ]'
st a keys mirror send --to out/b.req --out out/early.wrapped
checke "A: send before its SO trusted B's key: refused, no file" 'refused "error 4034" && [ ! -e out/early.wrapped ]'
st a keys mirror trust --request out/b.req --so-pin-file "$work/a-hsm/user.pin"
checke "A: trust with the user PIN instead of the SO PIN: refused" '[ "$rc" != 0 ]'
sed 's/^station_id=station-b$/station_id=station-c/' out/b.req >out/b-renamed.req
st a keys mirror trust --request out/b-renamed.req --so-pin-file "$work/a-hsm/so.pin"
checke "A: trust of a request with a changed byte: refused" 'refused "error 4034"'
st a keys mirror trust --request out/b.req --so-pin-file "$work/a-hsm/so.pin"
checke "A: its Security Officer trusts B's receiving key" '[ "$rc" = 0 ] && has "trusts keyline-mirror-to-" last.out'
st a keys mirror send --to out/b.req --out out/v1.wrapped --version 1
checke "A: version 1 cannot be mirrored (never extractable)" 'refused "never extractable" && [ ! -e out/v1.wrapped ]'
st a keys mirror send --to out/b.req --out out/a2b.wrapped
checke "A: the master v2 wrapped for B with a signed manifest" '[ "$rc" = 0 ] && has "^to_serial=" out/a2b.wrapped'

b_before=$(count_keys b)
c_before=$(count_keys c)
# --- refused at B and C: nothing imported --------------------------------------------------------------
st c keys mirror receive --in out/a2b.wrapped --from out/a-station.pem
checke "the file given to a third token (C): refused (another serial), nothing imported" \
  'refused "is for token serial" && [ "$(count_keys c)" = "$c_before" ]'
python3 - out/a2b.wrapped out/flip-wrapped.wrapped <<'PY'
import sys, base64
lines = open(sys.argv[1]).read().split("\n")
i = next(n for n, l in enumerate(lines) if l.startswith("wrapped="))
raw = bytearray(base64.b64decode(lines[i][8:])); raw[100] ^= 1
lines[i] = "wrapped=" + base64.b64encode(bytes(raw)).decode()
open(sys.argv[2], "w").write("\n".join(lines))
PY
st b keys mirror receive --in out/flip-wrapped.wrapped --from out/a-station.pem
checke "a changed byte in the wrapped key: refused (hash), nothing imported" \
  'refused "SHA-256 differs" && [ "$(count_keys b)" = "$b_before" ]'
sed 's/^version=2$/version=3/; s/^label=keyline-master-v2$/label=keyline-master-v3/' out/a2b.wrapped >out/flip-manifest.wrapped
st b keys mirror receive --in out/flip-manifest.wrapped --from out/a-station.pem
checke "a changed manifest: refused (signature), nothing imported" \
  'refused "signature does not verify" && [ "$(count_keys b)" = "$b_before" ]'
b_serial=$(sed -n 's/^token_serial=//p' out/b.req)
c_serial=$(sed -n 's/^token_serial=//p' out/c.req)
sed "s/^to_serial=$b_serial\$/to_serial=$c_serial/" out/a2b.wrapped >out/for-c.wrapped
st c keys mirror receive --in out/for-c.wrapped --from out/a-station.pem
checke "a manifest changed to name C's serial: refused at C (signature), nothing imported" \
  'refused "signature does not verify" && [ "$(count_keys c)" = "$c_before" ]'
st b keys mirror receive --in out/a2b.wrapped --from out/c-station.pem
checke "another station's certificate as --from: refused, nothing imported" \
  'refused "error 4034" && [ "$(count_keys b)" = "$b_before" ]'
st b keys import --in out/a2b.wrapped --from out/a-station.pem
checke "a mirror file through keys import: refused, nothing imported" \
  'refused "not export" && [ "$(count_keys b)" = "$b_before" ]'

# --- B imports; both derive the same key ----------------------------------------------------------------
st b keys mirror receive --in out/a2b.wrapped --from out/a-station.pem
checke "B imports master v2 from A" '[ "$rc" = 0 ] && has "imported keyline-master-v2" last.out'
v2chip=0123456789ABCDEF0123
st a keys check --imei 490154203237518 --chip "$v2chip" --version 2
a2=$(cat last.out)
st b keys check --imei 490154203237518 --chip "$v2chip" --version 2
b2=$(cat last.out)
checke "A and B derive the same v2 communication key (and v2 check value) for one chip" \
  '[ "$rc" = 0 ] && has "^version 2 check [0-9A-F]* kcv " last.out && [ "$a2" = "$b2" ]'
a2check=$(psql "$(db a)" -tAc "SELECT check_value FROM secret.master_key WHERE version = 2")
b2check=$(psql "$(db b)" -tAc "SELECT check_value FROM secret.master_key WHERE version = 2")
checke "the v2 check value A recorded at the roll is B's, and keys check names it" \
  '[ -n "$a2check" ] && [ "$a2check" = "$b2check" ] && has "check $a2check " last.out'
st a keys check --imei 490154203237518 --version 1
a1=$(cat last.out)
st b keys check --imei 490154203237518 --version 1
checke "and their own version 1 keys differ (never mirrored)" '[ "$a1" != "$(cat last.out)" ]'
b_after=$(count_keys b)
st b keys mirror receive --in out/a2b.wrapped --from out/a-station.pem
checke "the same file a second time: refused (replay), nothing imported" \
  'refused "imported before (a replay)" && [ "$(count_keys b)" = "$b_after" ]'
done_rows=$(psql "$(db b)" -tAc "SELECT count(*) FROM journal.audit WHERE event = 'custody.mirror.receive.done'")
failed_rows=$(psql "$(db b)" -tAc "SELECT count(*) FROM journal.audit WHERE event = 'custody.mirror.receive.failed'")
checke "B's audit: begin and done of the import, a failed row for each refusal" \
  '[ "$done_rows" = 1 ] && [ "$failed_rows" -ge 4 ]'

st b keys status --json
cp last.out b-status.json
st a keys status --json
cp last.out a-status2.json
checke "keys status: A says v2 was sent to B's serial, B says it came from A's" \
  'python3 - a-status2.json b-status.json "$b_serial" <<PY
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
sent = [t for t in a["mirror"] if t["direction"] == "sent" and t["to_serial"] == sys.argv[3] and t["version"] == 2]
got = [t for t in b["mirror"] if t["direction"] == "received" and t["from_serial"] == a["serial"] and t["version"] == 2]
v2 = [k for k in b["keys"] if k["label"] == "keyline-master-v2"][0]
certs = [c for c in b["certificates"] if c["file"] == "root.pem" and c["issuer"] == "custody Root"]
sys.exit(0 if sent and got and v2["wrap_with_trusted"] and not v2["never_extractable"] and certs else 1)
PY'

# --- export / import to a new host (C) --------------------------------------------------------------------
st a keys mirror trust --request out/c.req --so-pin-file "$work/a-hsm/so.pin"
st a keys export --to out/c.req --out out/a2c.export
checke "A: keys export to C's token" '[ "$rc" = 0 ]'
st b keys import --in out/a2c.export --from out/a-station.pem
checke "the export given to B: refused (another serial)" 'refused "is for token serial"'
st c keys import --in out/a2c.export --from out/a-station.pem
st c keys check --imei 490154203237518 --chip "$v2chip" --version 2
checke "C imports it and derives what A derives" '[ "$(cat last.out)" = "$a2" ]'

# --- attributes on every token (pkcs11-tool) ---------------------------------------------------------------
# One line per key object: "<class>|<label>|<usage>|<access>".
flat() {
  objects "$1" | awk '
    /Key Object/ { if (c) print c "|" l "|" u "|" a; c = $1; l = ""; u = ""; a = "" }
    /^ *label:/ { sub(/^ *label: */, ""); l = $0 }
    /^ *Usage:/ { sub(/^ *Usage: */, ""); u = $0 }
    /^ *Access:/ { sub(/^ *Access: */, ""); a = $0 }
    END { if (c) print c "|" l "|" u "|" a }'
}
for s in root a b c; do
  flat "$s" >"objects-$s.txt"
  checke "token $s: every private and secret key sensitive" \
    '! grep -E "^(Private|Secret)\|" objects-$s.txt | grep -v "|[^|]*sensitive" | grep -q .'
  checke "token $s: every signing key (root, Device CA, station TLS) never extractable, usage sign only" \
    '! grep -E "^Private\|keyline-(root|device-ca|station-tls)\|" objects-$s.txt | grep -vE "\|sign\|.*never extractable" | grep -q .'
  checke "token $s: receiving keys unwrap only and never extractable" \
    '! grep -E "^Private\|keyline-mirror-rx-" objects-$s.txt | grep -vE "\|unwrap\|.*never extractable" | grep -q .'
done
checke "A, B, C: master v2 extractable (only under a trusted key: keys status) and not never-extractable" \
  'for s in a b c; do grep -E "^Secret\|keyline-master-v2\|" objects-$s.txt | grep -q "extractable" || exit 1;
     grep -E "^Secret\|keyline-master-v2\|" objects-$s.txt | grep -q "never extractable" && exit 1; done; true'
checke "A, B, C: master v2 a secret key of usage derive only" \
  'for s in a b c; do grep -E "^Secret\|keyline-master-v2\|derive\|" objects-$s.txt | grep -q . || exit 1; done; true'
checke "A: the trusted key of B is public, wrap only" \
  'grep -E "^Public\|keyline-mirror-to-$b_serial-" objects-a.txt | grep -q "|wrap|"'
echo "custody e2e: $fails failure(s)"
[ "$fails" = 0 ]
