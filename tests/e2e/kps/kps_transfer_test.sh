#!/usr/bin/env bash
# End-to-end test of keyline-kps and the device agent (docs/kps.md) on a whole line (scripts/lib/line.sh):
# a key moves from device A to device B through a KPS that never sees it; the policy refuses device C at
# request (AC1) and device D at delivery (AC2); a device the key was not sealed for cannot open it; the
# ciphertext is deleted on acknowledgement; the KPS database never holds the key.
# Usage: kps_transfer_test.sh WORKDIR   (LINE_BIN = directory holding the keyline-* programs)
set -euo pipefail

work=${1:?usage: kps_transfer_test.sh WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
trap line_down EXIT

rm -rf "$work"
mkdir -p "$work"
line_up "$work/line" 4
line_personalize >"$work/personalize.json"
DEV="$LINE_BIN/keyline-device"
CA="$LINE_DIR/pki/tls-ca.pem"

failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
ddir() { echo "${LINE_DEVICE_DIRS[$1]}"; }
chip() { "$DEV" status --dir "$(ddir "$1")" | awk '$1 == "chip_id" {print $2}'; }
A=$(chip 0) B=$(chip 1) C=$(chip 2) D=$(chip 3)
for i in 0 1 2 3; do "$DEV" boot --dir "$(ddir "$i")" >/dev/null || { echo "FAIL device $i not personalized"; exit 1; }; done

cat >"$work/policy.txt" <<POLICY
# A may give its key to B; D may ask A, but A may not deliver to D; C is not mentioned.
allow   $A $B
request $A $D
POLICY
line_kps_up "$work/policy.txt"
agent() { local verb=$1 idx=$2; shift 2; "$DEV" kps "$verb" --dir "$(ddir "$idx")" --kps "$LINE_KPS_URL" --ca "$CA" "$@"; }

"$DEV" key-new --dir "$(ddir 0)" --label user-key
key_hex=$(xxd -p -c 64 "$(ddir 0)/secure/keys/user-key.key")
[ "${#key_hex}" -eq 64 ] && pass "source holds a 32-byte user key" || fail "user key is ${#key_hex} hex digits"
perm=$(stat -c %a "$(ddir 0)/secure/keys/user-key.key")
[ "$perm" = 600 ] && pass "user key file is 0600" || fail "user key file mode $perm"
kcv_a=$("$DEV" key-kcv --dir "$(ddir 0)" --label user-key)

# --- AC1: C is not allowed to ask A --------------------------------------------------------------
rc=0
agent request 2 --from "$A" --label user-key >"$work/c.out" 2>"$work/c.err" || rc=$?
if [ "$rc" -eq 5 ] && grep -q "403" "$work/c.err"; then pass "C refused at request (AC1): $(cat "$work/c.err")"
else fail "C request: exit $rc $(cat "$work/c.err")"; fi
[ "$(line_kps_sql "SELECT count(*) FROM transfers WHERE target_chip = '$C'")" = 0 ] &&
  pass "no transfer row for C" || fail "a transfer row exists for C"

# --- an unsigned or tampered request is 401 --------------------------------------------------------
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$CA" "$LINE_KPS_URL/v1/notifications")
[ "$code" = 401 ] && pass "unsigned request -> 401" || fail "unsigned request -> $code"

# --- the transfer A -> B ---------------------------------------------------------------------------
agent request 1 --from "$A" --label user-key | tee "$work/request.out"
id=$(awk '$1 == "requested" {print $2}' "$work/request.out")
[ -n "$id" ] || { fail "no transfer id"; exit 1; }
[ "$(line_kps_sql "SELECT state FROM transfers WHERE id = '$id'")" = requested ] && pass "state requested" || fail "state after request"
agent receive 1 | tee "$work/receive0.out"
grep -q "receive: 0 received" "$work/receive0.out" && pass "nothing to receive before delivery" || fail "receive before delivery"

agent serve-once 0 | tee "$work/serve.out"
grep -q "^delivered $id user-key to $B" "$work/serve.out" && pass "A delivered the sealed key" || fail "serve-once output"
[ "$(line_kps_sql "SELECT state || ' ' || length(ciphertext) FROM transfers WHERE id = '$id'")" = "delivered 80" ] &&
  pass "ciphertext stored (80 bytes = enc 32 + key 32 + tag 16)" || fail "state after delivery"
line_kps_sql "SELECT encode(ciphertext, 'hex') FROM transfers WHERE id = '$id'" | xxd -r -p >"$work/sealed.bin"

# The KPS database while it holds the ciphertext: the key is nowhere in it.
pg_dump "$LINE_KPS_DB" >"$work/kps-dump-delivered.sql"
if grep -qi "$key_hex" "$work/kps-dump-delivered.sql"; then fail "the KPS database holds the key in clear"
else pass "KPS database dump (with ciphertext) does not contain the key"; fi
if grep -qi "$(echo "$key_hex" | cut -c1-16)" "$work/kps-dump-delivered.sql"; then
  fail "a key fragment is visible"; else pass "no 8-byte fragment of the key visible"; fi

# A device the key was not sealed for cannot open it (C has its own transport key).
rc=0
"$DEV" kps open-file --dir "$(ddir 2)" --in "$work/sealed.bin" --transfer "$id" --label user-key \
  >"$work/c-open.out" 2>"$work/c-open.err" || rc=$?
if [ "$rc" -ne 0 ] && [ ! -e "$(ddir 2)/secure/keys/user-key.key" ]; then
  pass "C cannot open the key sealed for B (exit $rc: $(cat "$work/c-open.err"))"
else fail "C opened the key sealed for B (exit $rc)"; fi
# Nor can B open it under another transfer id (the id is the HPKE associated data).
rc=0
"$DEV" kps open-file --dir "$(ddir 1)" --in "$work/sealed.bin" --transfer "00000000-0000-0000-0000-000000000000" \
  --label other >/dev/null 2>&1 || rc=$?
[ "$rc" -ne 0 ] && pass "the sealed key does not open under another transfer id" || fail "opened under another transfer id"

agent receive 1 | tee "$work/receive.out"
grep -q "^received $id user-key from $A kcv $kcv_a" "$work/receive.out" && pass "B received the key" || fail "receive output"
kcv_b=$("$DEV" key-kcv --dir "$(ddir 1)" --label user-key)
[ "$kcv_a" = "$kcv_b" ] && pass "KCVs equal: $kcv_a" || fail "KCV A $kcv_a != B $kcv_b"
cmp -s "$(ddir 0)/secure/keys/user-key.key" "$(ddir 1)/secure/keys/user-key.key" && pass "same key bytes on A and B" ||
  fail "key bytes differ"

# After the acknowledgement the ciphertext is gone.
[ "$(line_kps_sql "SELECT state || ' ' || (ciphertext IS NULL) FROM transfers WHERE id = '$id'")" = "acknowledged true" ] &&
  pass "acknowledged, ciphertext deleted" || fail "ciphertext still stored after acknowledge"
[ "$(line_kps_sql "SELECT count(*) FROM transfers WHERE ciphertext IS NOT NULL")" = 0 ] &&
  pass "no ciphertext row left" || fail "ciphertext rows left"
pg_dump "$LINE_KPS_DB" >"$work/kps-dump-acked.sql"
grep -qi "$key_hex" "$work/kps-dump-acked.sql" && fail "key in dump after ack" || pass "KPS dump after ack does not contain the key"
ct_hex=$(xxd -p -c 200 "$work/sealed.bin")
grep -qi "$ct_hex" "$work/kps-dump-acked.sql" && fail "ciphertext in dump after ack" || pass "ciphertext not in the dump after ack"

# The source learns of the acknowledgement; nothing is delivered twice.
agent serve-once 0 | tee "$work/serve2.out"
grep -q "notice key-acknowledged /v1/transfers/$id" "$work/serve2.out" && pass "source notified of the acknowledgement" ||
  fail "no key-acknowledged notice"
grep -q "serve-once: 0 delivered" "$work/serve2.out" && pass "nothing delivered twice" || fail "second serve-once delivered"

# --- a recorded request cannot be replayed -------------------------------------------------------
# Through a recording proxy that holds even the KPS's TLS key: the agent works as before, and a replay of
# its signed request is refused (nonce seen); with a fresh nonce the signature no longer verifies.
pport=$(line_free_port)
python3 "$here/record_proxy.py" "$pport" "${LINE_KPS_URL#https://}" "$LINE_DIR/pki/kps-tls.pem" \
  "$LINE_DIR/pki/kps-tls.key" "$CA" "$work/recorded.jsonl" >"$work/proxy.out" 2>&1 &
LINE_PIDS+=($!)
line_wait_port 127.0.0.1 "$pport" 20 || { fail "recording proxy did not start"; cat "$work/proxy.out"; }
"$DEV" kps receive --dir "$(ddir 1)" --kps "https://127.0.0.1:$pport" --ca "$CA" >"$work/proxied.out" &&
  pass "agent works through the recording proxy" || fail "agent through the proxy"
replay() {  # LINE_NO [NONCE]: replays recorded request LINE_NO straight to the KPS, prints the status
  python3 - "$work/recorded.jsonl" "$1" "${2:-}" "$LINE_KPS_URL" "$CA" <<'PY'
import base64, http.client, json, ssl, sys
rec = json.loads(open(sys.argv[1]).read().splitlines()[int(sys.argv[2])])
if sys.argv[3]:
    rec["headers"]["Keyline-Nonce"] = sys.argv[3]
host, port = sys.argv[4][len("https://"):].rsplit(":", 1)
c = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=sys.argv[5]))
c.request(rec["method"], rec["path"], body=base64.b64decode(rec["body"]), headers=rec["headers"])
print(c.getresponse().status)
PY
}
code=$(replay 0)
[ "$code" = 401 ] && pass "replayed signed request -> 401" || fail "replayed signed request -> $code"
code=$(replay 0 0123456789ABCDEF0123456789ABCDEF)
[ "$code" = 401 ] && pass "replay with a fresh nonce -> 401" || fail "replay with a fresh nonce -> $code"

# --- AC2: D may ask, but A may not deliver to D ---------------------------------------------------
agent request 3 --from "$A" --label user-key | tee "$work/d-request.out"
did=$(awk '$1 == "requested" {print $2}' "$work/d-request.out")
rc=0
agent serve-once 0 >"$work/d-serve.out" 2>"$work/d-serve.err" || rc=$?
if [ "$rc" -eq 5 ] && grep -q 403 "$work/d-serve.err"; then pass "delivery to D refused (AC2): $(cat "$work/d-serve.err")"
else fail "delivery to D: exit $rc $(cat "$work/d-serve.err")"; fi
[ "$(line_kps_sql "SELECT state || ' ' || (ciphertext IS NULL) FROM transfers WHERE id = '$did'")" = "requested true" ] &&
  pass "no ciphertext stored for D" || fail "D's transfer changed"

echo "--- kps log (last lines)"
tail -n 5 "$LINE_DIR/logs/kps.log"
if [ "$failures" -ne 0 ]; then echo "$failures check(s) failed"; exit 1; fi
echo "all KPS checks passed"
