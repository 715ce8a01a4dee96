#!/usr/bin/env bash
# Issue #14, custody operations in the ceremony log (docs/ceremony.md "Custody statements"): a station's
# `keys roll master` (done) and a `keys mirror trust` its token refuses (failed) each leave a statement
# signed by the station's token in <pki>/custody/; `keyline-ceremony log import` checks and appends them
# (intent and outcome, the statement's begin/end and audit rows). Refused, each logged as refused: the same
# statement again (a replay), a changed byte, a statement of a station under another root, a file that
# does not parse. `log verify` still finds a changed, a dropped and a reordered import line.
# Environment: LINE_BIN (keyline-station, keyline-ceremony), E2E_DIR (scratch, wiped first).
set -uo pipefail
top=${KEYLINE_SOURCE_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)}
work=${E2E_DIR:?set E2E_DIR}
bin=${LINE_BIN:?set LINE_BIN}
rm -rf "$work"
mkdir -p "$work/out" "$work/tamper"
cd "$work" || exit 1

fails=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
checke() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
has() { grep -q -- "$1" "$2"; }

for t in root-hsm other-hsm a-hsm c-hsm; do "$top/scripts/hsm.sh" init "$work/$t" "$t" >/dev/null || exit 1; done
module=$(cat "$work/root-hsm/module")
trap '"$top/scripts/pg.sh" stop "$work/pg" >/dev/null 2>&1' EXIT
"$top/scripts/pg.sh" start "$work/pg" >/dev/null 2>&1 || { fail "PostgreSQL did not start"; exit 1; }
ci=$(cat "$work/pg/conninfo")
for s in a c; do psql "$ci" -qc "CREATE DATABASE keyline_$s" >/dev/null; done

cer() {  # root-hsm|other-hsm DIR args...
  local hsm=$1 dir=$2
  shift 2
  SOFTHSM2_CONF=$work/$hsm/softhsm2.conf "$bin/keyline-ceremony" --dir "$work/$dir" --hsm-module "$module" \
    --token "$hsm" --pin-file "$work/$hsm/user.pin" "$@" >"$work/last.out" 2>&1
  rc=$?
}
st() {  # a|c args...
  local s=$1
  shift
  SOFTHSM2_CONF=$work/$s-hsm/softhsm2.conf KEYLINE_STATION_DB=${ci/dbname=postgres/dbname=keyline_$s} \
    "$bin/keyline-station" --hsm-module "$module" --token "$s-hsm" --pin-file "$work/$s-hsm/user.pin" \
    --pki-dir "$work/pki-$s" --station-id "station-$s" --channel plain "$@" >"$work/last.out" 2>&1
  rc=$?
}
station_under() {  # station root-hsm|other-hsm ceremony-dir
  st "$1" keys init --offline-root --organization e2e
  cer "$2" "$3" sign --csr "pki-$1/device-ca.csr" --profile device-ca --out "out/$1-device-ca.pem"
  cer "$2" "$3" sign --csr "pki-$1/station.csr" --profile station --out "out/$1-station.pem"
  st "$1" keys install-cert --root "$3/root.pem" --cert "out/$1-device-ca.pem" --cert "out/$1-station.pem"
}

cer root-hsm cer init-root --subject-cn "statements Root" --organization e2e --days 7300
cer other-hsm other init-root --subject-cn "another Root" --organization e2e --days 7300
station_under a root-hsm cer
station_under c other-hsm other
checke "(station a under the ceremony's root, station c under another root)" '[ "$rc" = 0 ]'

# --- custody operations leave signed statements -----------------------------------------------------------
st a keys roll master
roll=$(ls pki-a/custody/*custody-roll*.stmt 2>/dev/null | head -n1)
checke "keys roll master: a statement in pki-a/custody/ (event, result done, begin/end, audit rows)" \
  '[ -n "$roll" ] && has "^event=custody.roll$" "$roll" && has "^result=done$" "$roll" && has "^begin=20" "$roll" &&
   has "^audit_end=[1-9]" "$roll" && has "^signature=" "$roll" && has "^certificate=" "$roll"'
st c keys mirror receive-init --out out/c.req
st a keys mirror receive-init --out out/a.req
st a keys mirror trust --request out/a.req --so-pin-file "$work/a-hsm/user.pin"
send=$(ls pki-a/custody/*custody-trust*.stmt 2>/dev/null | head -n1)
checke "keys mirror trust with the user PIN as the SO PIN (the token refuses): a statement with result failed" \
  '[ "$rc" != 0 ] && [ -n "$send" ] && has "^result=failed$" "$send" && has "^outcome=." "$send"'
other=$(ls pki-c/custody/*receive-init*.stmt 2>/dev/null | head -n1)

# --- the ceremony imports them ----------------------------------------------------------------------------
cer root-hsm cer log import --statement "$roll" --statement "$send"
checke "log import appends both, prints the head" '[ "$rc" = 0 ] && has "^log head (write it down): " last.out'
python3 - cer/ceremony.log <<'PY' >out/imports.txt
import json, sys
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e["op"] == "import" and e["phase"] == "outcome":
        print(e["result"], e.get("event", "-"), e.get("op_result", "-"), e.get("station_id", "-"), e.get("audit_begin", "-"))
PY
checke "the log's import outcomes carry the operations, their result and audit rows" \
  'grep -q "^imported custody.roll done station-a [1-9]" out/imports.txt &&
   grep -q "^imported custody.trust failed station-a [1-9]" out/imports.txt'
cer root-hsm cer log verify --head "$(sed -n 's/^log head (write it down): //p' last.out 2>/dev/null)"
cer root-hsm cer log verify
checke "log verify: every line (imports included) signed by the root" '[ "$rc" = 0 ] && has "^ok: " last.out'
lines=$(wc -l <cer/ceremony.log)

cer root-hsm cer log import --statement "$roll"
checke "the same statement again: refused (a replay), logged as refused" \
  '[ "$rc" = 5 ] && has "imported before (a replay)" last.out && [ "$(tail -n1 cer/ceremony.log | grep -c "\"result\":\"refused\"")" = 1 ]'
sed 's/^detail=master version 2/detail=master version 3/' "$roll" >tamper/changed.stmt
cer root-hsm cer log import --statement tamper/changed.stmt
checke "a changed byte: refused (signature)" '[ "$rc" = 5 ] && has "signature does not verify" last.out'
cer root-hsm cer log import --statement "$other"
checke "a statement of a station under another root: refused" '[ "$rc" = 5 ] && has "does not chain to this ceremony" last.out'
printf 'keyline-custody-statement-v1\nid=1\n' >tamper/garbage.stmt
cer root-hsm cer log import --statement tamper/garbage.stmt
checke "a file that does not parse: refused, exit 3" '[ "$rc" = 3 ] && has "custody statement" last.out'
checke "each refusal left an intent and an outcome line" '[ "$(wc -l <cer/ceremony.log)" = $((lines + 8)) ]'
cer root-hsm cer log verify
checke "(the log still verifies)" '[ "$rc" = 0 ]'

# --- tampering with the import lines is found ------------------------------------------------------------------
n=$(grep -n '"op":"import","phase":"outcome","intent"' cer/ceremony.log | head -n1 | cut -d: -f1)
sed "${n}s/\"op_result\":\"done\"/\"op_result\":\"fail\"/" cer/ceremony.log >tamper/changed.log
cer root-hsm cer log verify --log tamper/changed.log
checke "a changed import line: log verify fails and names line $n" '[ "$rc" = 3 ] && has "^line $n: signature does not verify" last.out'
sed "${n}d" cer/ceremony.log >tamper/dropped.log
cer root-hsm cer log verify --log tamper/dropped.log
checke "a dropped import line: found" '[ "$rc" = 3 ] && has "dropped" last.out'
awk -v n="$n" 'NR == n - 1 { held = $0; next } { print } NR == n { print held }' cer/ceremony.log >tamper/reordered.log
cer root-hsm cer log verify --log tamper/reordered.log
checke "two import lines swapped: found" '[ "$rc" = 3 ] && grep -Eq "reordered|repeated" last.out'
echo "statements e2e: $fails failure(s)"
[ "$fails" = 0 ]
