#!/usr/bin/env bash
# Issue #15 end to end, the station's side: chips with a vendor identity personalized over SCP11a
# (--key-source generate and device) through a TCP proxy that records every byte of the link, then
# restored by keyline-recovery; the capture holds no device private key, no communication key and no
# package plaintext. Refusals: a chip of an unlisted vendor and a chip whose CPLC was changed after
# chip fab (before any claim: pool unchanged), a station whose OCE certificate is not under the
# device's ROM root (6982 from the device), one changed byte in one secured STORE DATA (6982, the
# device stays blank, the IMEI is voided), and --key-source device over the plain channel (exit 2).
# Environment: LINE_BIN (the programs), E2E_DIR (scratch directory, wiped first).
set -uo pipefail
top=${KEYLINE_SOURCE_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)}
here=$(cd "$(dirname "$0")" && pwd)
work=${E2E_DIR:?set E2E_DIR}
: "${LINE_BIN:?set LINE_BIN}"
export LINE_BIN

[ -d "$work/line/pg" ] && "$top/scripts/pg.sh" stop "$work/line/pg" >/dev/null 2>&1
rm -rf "$work"
mkdir -p "$work"

# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
EXTRA_PIDS=()
cleanup() {
  local p
  for p in "${EXTRA_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${EXTRA_PIDS[@]}"; do wait "$p" 2>/dev/null; done
  line_down
}
trap cleanup EXIT

fails=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
check() {  # description command...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
has() { grep -q -- "$1" "$2"; }

LINE_CHANNEL=scp11a line_up "$work/line" 5 2> >(tee "$work/line-up.err" >&2) || { echo "line did not come up"; exit 1; }
check "the line's chips have a vendor identity and the station trusts that vendor" \
  test -f "$KEYLINE_CHIP_VENDORS" -a "$KEYLINE_CHANNEL" = scp11a
logs=$LINE_DIR/logs
sql() { psql "$KEYLINE_STATION_DB" -tAqc "$1"; }
DEV="$LINE_BIN/keyline-device"
ST="$LINE_BIN/keyline-station"
pool_imeis() { sql "SELECT count(*) FROM pool.imei"; }
lifecycle() { "$DEV" status --dir "$1" | awk '$1 == "lifecycle" {print $2}'; }

# proxy NAME TARGET [--flip-secured-store N]: a recording proxy; sets PROXY (its HOST:PORT).
proxy() {
  local name=$1 target=$2
  shift 2
  python3 "$here/link_proxy.py" "$work/$name.port" "$target" "$work/$name.capture" "$@" 2>"$work/$name.proxy.err" &
  EXTRA_PIDS+=($!)
  local i
  for ((i = 0; i < 100; i++)); do [ -s "$work/$name.port" ] && break; sleep 0.05; done
  PROXY="127.0.0.1:$(cat "$work/$name.port")"
}

# serve_one DIR: `keyline-device serve` of one device directory; sets SERVED (its HOST:PORT).
serve_one() {
  local out="$1.serve.out"
  "$DEV" serve --dir "$1" --listen 127.0.0.1:0 >"$out" 2>"$1.serve.err" &
  EXTRA_PIDS+=($!)
  local i
  for ((i = 0; i < 100; i++)); do grep -q '^listening' "$out" 2>/dev/null && break; sleep 0.05; done
  SERVED=$(awk '$1 == "listening" {print $2; exit}' "$out")
}

# The device's secrets and a piece of its package plaintext (the identity certificate, which the package
# carries), searched for in the captures 16 bytes at a time.
secrets_of() {  # DEVICE_DIR CHIP -> "name hex" lines: 8101 8102 8103 (as the device holds them) and the identity certificate
  # 8101 is PKCS#8: its header and the public point in it are public, so its private scalar is searched.
  "$LINE_BIN/keyline-test-unseal" "$1" | awk '$2 == "hex" {print $1, $3}' | python3 -c '
import sys
for line in sys.stdin:
    name, v = line.split()
    if name == "8101":
        b = bytes.fromhex(v)
        at = b.find(bytes.fromhex("0201010420"))  # ECPrivateKey: version 1, privateKey OCTET STRING (RFC 5915)
        v = b[at + 5:at + 37].hex() if at >= 0 else ""
    print(name, v)'
  # The certificate's last 40 bytes (in its signature: random) stand for the package plaintext; the rest
  # of it shares issuer names and extensions with the certificates PSO and GET DATA carry in clear.
  echo "identity-certificate $(sql "SELECT encode(substring(identity_cert FROM length(identity_cert) - 39), 'hex') FROM journal.device WHERE chip_id = '$2' AND state <> 'void'")"
}
windows_found() {  # CAPTURE SECRETS_FILE -> names of the secrets with a 16-byte window in the capture
  python3 - "$1" "$2" <<'PY'
import sys
cap = open(sys.argv[1], "rb").read()
for line in open(sys.argv[2]):
    name, hexv = line.split()
    v = bytes.fromhex(hexv)
    if len(v) < 16:
        print(name + ":too-short")
        continue
    if any(v[i:i + 16] in cap for i in range(0, len(v) - 15)):
        print(name)
PY
}

mapfile -t chips < <(awk '$1 == "listening" {print $3}' "$logs/fleet.out")

# --- 1. generate over scp11a, through the recording proxy -------------------------------------------
proxy gen "${LINE_DEVICES[0]}"
"$ST" personalize --json --device "$PROXY" >"$work/gen.json" 2>"$work/gen.err"
check "generate over scp11a: device 0 personalized and published" has '"done":true' "$work/gen.json"
check "the result says channel scp11a, key source generate" \
  grep -q '"channel":"scp11a","key_source":"generate"' "$work/gen.json"
check "the journal row says scp11a and generate" \
  test "$(sql "SELECT channel || ' ' || key_source FROM journal.device WHERE chip_id = '${chips[0]}'")" = "scp11a generate"
check "no 'plain channel' note for an scp11a device" bash -c "! grep -q 'plain channel' '$work/gen.err'"
secrets_of "${LINE_DEVICE_DIRS[0]}" "${chips[0]}" >"$work/gen.secrets"
check "the device's secrets were read (8101, 8102, 8103, certificate)" test "$(wc -l <"$work/gen.secrets")" -eq 4
found=$(windows_found "$work/gen.capture" "$work/gen.secrets")
check "the scp11a capture ($(stat -c %s "$work/gen.capture") bytes) holds no private key, communication key or package plaintext${found:+ (found: $found)}" \
  test -z "$found"

# --- 2. --key-source device over scp11a, through the recording proxy -----------------------------
proxy dev "${LINE_DEVICES[1]}"
"$ST" --key-source device personalize --json --device "$PROXY" >"$work/dev.json" 2>"$work/dev.err"
check "device keys over scp11a: device 1 personalized and published" has '"done":true' "$work/dev.json"
check "the result says key source device" grep -q '"channel":"scp11a","key_source":"device"' "$work/dev.json"
check "the secret record keeps the key source and both statements' SHA-256" \
  test "$(sql "SELECT key_source || ' ' || length(identity_statement_sha256) || ' ' || length(transport_statement_sha256) FROM secret.device WHERE chip_id = '${chips[1]}'")" = "device 64 64"
check "the chip's attestation counter is kept (2 statements)" \
  test "$(sql "SELECT last_counter FROM journal.chip_attestation WHERE chip_id = '${chips[1]}'")" -ge 2
secrets_of "${LINE_DEVICE_DIRS[1]}" "${chips[1]}" >"$work/dev.secrets"
check "the device sealed keys of its own (8101, 8102) with the station's 8103 and certificate" \
  test "$(wc -l <"$work/dev.secrets")" -eq 4
found=$(windows_found "$work/dev.capture" "$work/dev.secrets")
check "the device-key capture ($(stat -c %s "$work/dev.capture") bytes) holds none of them${found:+ (found: $found)}" test -z "$found"
# The certified identity key is the one the chip holds: its certificate's key and 8101's agree.
id_pub=$(sql "SELECT encode(identity_cert, 'base64') FROM journal.device WHERE chip_id = '${chips[1]}'" | tr -d '\n' |
  base64 -d | openssl x509 -inform DER -noout -pubkey 2>/dev/null)
dev_pub=$("$LINE_BIN/keyline-test-unseal" "${LINE_DEVICE_DIRS[1]}" | awk '$1 == "8101" && $2 == "hex" {print $3}' | xxd -r -p |
  openssl pkey -inform DER -pubout 2>/dev/null)
check "the identity certificate certifies the key the chip generated" test -n "$id_pub" -a "$id_pub" = "$dev_pub"

# --- 3. the search works: the same checks over the plain channel find the secrets ------------------
# A chip without a vendor identity (a vendor chip refuses personalization outside the channel).
"$DEV" make --dir "$work/plain-dev" --rom-ca "$LINE_DIR/pki/root.pem" >/dev/null
serve_one "$work/plain-dev"
plain_chip=$("$DEV" status --dir "$work/plain-dev" | awk '$1 == "chip_id" {print $2}')
before=$(pool_imeis)
"$ST" personalize --json --device "$SERVED" >"$work/novendor.json" 2>&1
check "over scp11a a chip without a vendor identity is refused before any claim (1192)" \
  bash -c "grep -q '\"error_code\":1192' '$work/novendor.json' && grep -q -- '--channel plain' '$work/novendor.json' && [ $(pool_imeis) = $before ]"
proxy plain "$SERVED"
"$ST" --channel plain personalize --json --device "$PROXY" >"$work/plain.json" 2>"$work/plain.err"
check "plain channel: a chip without a vendor identity personalized" has '"done":true' "$work/plain.json"
check "plain channel said for the device" has "chip $plain_chip: plain channel" "$work/plain.err"
check "the journal row says plain" test "$(sql "SELECT channel FROM journal.device WHERE chip_id = '$plain_chip'")" = plain
secrets_of "$work/plain-dev" "$plain_chip" >"$work/plain.secrets"
found=$(windows_found "$work/plain.capture" "$work/plain.secrets" | tr '\n' ' ')
check "the plain capture does hold 8101, 8102, 8103 and the certificate (found: $found)" \
  test "$found" = "8101 8102 8103 identity-certificate "

# --- 4. recovery restores both scp11a devices ------------------------------------------------------
for i in 0 1; do
  d=${LINE_DEVICE_DIRS[$i]}
  if ! "$DEV" boot --dir "$d" >"$work/before-$i.txt" 2>&1; then
    fail "device $i does not boot after personalization: $(head -c 200 "$work/before-$i.txt")"
    continue
  fi
  "$DEV" wipe-flash --dir "$d" >/dev/null
  "$LINE_BIN/keyline-recovery" restore --device "${LINE_DEVICES[$i]}" --db "$LINE_BACKUPDB_URL" \
    --ca "$LINE_DIR/pki/tls-ca.pem" --trust "$LINE_DIR/pki/root.pem" --no-log-check >"$work/restore-$i.out" 2>&1
  "$DEV" boot --dir "$d" >"$work/after-$i.txt" 2>&1
  check "recovery restores device $i (key source $([ "$i" = 0 ] && echo generate || echo device)): it boots as before" \
    cmp -s "$work/before-$i.txt" "$work/after-$i.txt"
done

# --- 5. counterfeit chips: refused before any claim ------------------------------------------------
"$DEV" vendor-init "$work/other-vendor" --name "Other Fab" >/dev/null
"$DEV" make --dir "$work/fake" --rom-ca "$LINE_DIR/pki/root.pem" --vendor "$work/other-vendor" >/dev/null
serve_one "$work/fake"
before=$(pool_imeis)
"$ST" personalize --json --device "$SERVED" >"$work/fake.json" 2>"$work/fake.err"
rc=$?
check "a chip of an unlisted vendor is refused (1192, exit 5): $(head -c 300 "$work/fake.json")" \
  bash -c "grep -q '\"error_code\":1192' '$work/fake.json' && grep -q '\"chip_refused\":true' '$work/fake.json' && [ $rc -eq 5 ]"
fake_chip=$("$DEV" status --dir "$work/fake" | awk '$1 == "chip_id" {print $2}')
check "... before any claim: pool unchanged, no journal row" \
  test "$(pool_imeis)" = "$before" -a "$(sql "SELECT count(*) FROM journal.device WHERE chip_id = '$fake_chip'")" = 0

"$DEV" make --dir "$work/moved" --rom-ca "$LINE_DIR/pki/root.pem" --vendor "$LINE_DIR/vendor" >/dev/null
moved_chip=$("$DEV" status --dir "$work/moved" | awk '$1 == "chip_id" {print $2}')
chmod u+w "$work/moved/rom/cplc.bin" 2>/dev/null
python3 - "$work/moved/rom/cplc.bin" "$moved_chip" <<'PY'
import sys
path, chip = sys.argv[1], bytes.fromhex(sys.argv[2])
b = bytearray(open(path, "rb").read())
at = b.find(chip[4:8])  # the IC serial number of the chip ID (core/cplc.h)
assert at >= 0, "serial not found in the CPLC"
b[at + 3] ^= 0x01
open(path, "wb").write(bytes(b))
PY
serve_one "$work/moved"
before=$(pool_imeis)
"$ST" personalize --json --device "$SERVED" >"$work/moved.json" 2>"$work/moved.err"
check "a chip whose CPLC names another chip ID than its certificates is refused (1193): $(head -c 300 "$work/moved.json")" \
  grep -q '"error_code":1193' "$work/moved.json"
check "... before any claim: pool unchanged" test "$(pool_imeis)" = "$before"

# --- 6. a station whose OCE certificate is not under the device's ROM root -------------------------
"$top/scripts/hsm.sh" init "$work/other-hsm" other-hsm >/dev/null
other() {
  SOFTHSM2_CONF=$work/other-hsm/softhsm2.conf "$ST" --hsm-module "$(cat "$work/other-hsm/module")" --token other-hsm \
    --pin-file "$work/other-hsm/user.pin" --pki-dir "$work/other-pki" --station-id station-x "$@"
}
other keys init >"$work/other-keys.out" 2>&1
before=$(pool_imeis)
other personalize --json --device "${LINE_DEVICES[3]}" >"$work/other.json" 2>"$work/other.err"
check "the device refuses a station certificate not from its ROM root (6982): $(head -c 300 "$work/other.json")" \
  bash -c "grep -q '\"done\":false' '$work/other.json' && grep -qi '6982' '$work/other.json'"
check "... nothing claimed, the device blank" \
  test "$(pool_imeis)" = "$before" -a "$(lifecycle "${LINE_DEVICE_DIRS[3]}")" = BLANK

# --- 7. one changed byte in one secured STORE DATA -------------------------------------------------
proxy flip "${LINE_DEVICES[4]}" --flip-secured-store 2
"$ST" personalize --json --device "$PROXY" >"$work/flip.json" 2>"$work/flip.err"
check "a changed byte in a secured command: 6982 and the station reports the store step: $(head -c 300 "$work/flip.json")" \
  bash -c "grep -q '\"step\":\"store\"' '$work/flip.json' && grep -qi '6982' '$work/flip.json'"
check "... the device is not personalized" test "$(lifecycle "${LINE_DEVICE_DIRS[4]}")" = BLANK
check "... and the claim is voided" \
  test "$(sql "SELECT state FROM journal.device WHERE chip_id = '${chips[4]}'")" = void

# --- 7b. a replayed secured command ---------------------------------------------------------------
"$DEV" make --dir "$work/replayed" --rom-ca "$LINE_DIR/pki/root.pem" --vendor "$LINE_DIR/vendor" >/dev/null
serve_one "$work/replayed"
replayed_chip=$("$DEV" status --dir "$work/replayed" | awk '$1 == "chip_id" {print $2}')
proxy replay "$SERVED" --replay-secured-store 3
"$ST" personalize --json --device "$PROXY" >"$work/replayed.json" 2>&1
check "a replayed secured STORE DATA: 6982 at the store step: $(head -c 300 "$work/replayed.json")" \
  bash -c "grep -q '\"step\":\"store\"' '$work/replayed.json' && grep -qi '6982' '$work/replayed.json'"
check "... the device is not personalized and the claim is voided" \
  test "$(lifecycle "$work/replayed") $(sql "SELECT state FROM journal.device WHERE chip_id = '$replayed_chip'")" = "BLANK void"

# --- 8. a statement no newer than one seen for the chip is a replay --------------------------------
# The station has seen counter 1000 for this chip: the chip's fresh statements (counter 1, 2) are replays.
"$DEV" make --dir "$work/replay" --rom-ca "$LINE_DIR/pki/root.pem" --vendor "$LINE_DIR/vendor" >/dev/null
replay_chip=$("$DEV" status --dir "$work/replay" | awk '$1 == "chip_id" {print $2}')
serve_one "$work/replay"
sql "INSERT INTO journal.chip_attestation (chip_id, last_counter) VALUES ('$replay_chip', 1000)" >/dev/null
"$ST" --key-source device personalize --json --device "$SERVED" >"$work/replay.json" 2>&1
check "a replayed statement (counter not above the highest seen) is refused at attest (1195): $(head -c 300 "$work/replay.json")" \
  bash -c "grep -q '\"step\":\"attest\",\"error_code\":1195' '$work/replay.json'"
check "... the IMEI voided, the device blank, the counter kept" \
  test "$(sql "SELECT state FROM journal.device WHERE chip_id = '$replay_chip'") $(lifecycle "$work/replay") $(sql "SELECT last_counter FROM journal.chip_attestation WHERE chip_id = '$replay_chip'")" = "void BLANK 1000"

# --- 9. usage errors --------------------------------------------------------------------------------
"$ST" --key-source device --channel plain personalize --device "${LINE_DEVICES[3]}" >"$work/usage1.out" 2>&1
check "--key-source device over the plain channel: exit 2" test $? -eq 2
env -u KEYLINE_CHIP_VENDORS "$ST" --channel scp11a personalize --device "${LINE_DEVICES[3]}" >"$work/usage2.out" 2>&1
rc=$?
check "scp11a without --chip-vendors: exit 2 naming --chip-vendors" bash -c "[ $rc -eq 2 ] && grep -q -- '--chip-vendors' '$work/usage2.out'"

echo "$fails failure(s)"
[ "$fails" -eq 0 ]
