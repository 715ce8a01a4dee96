#!/usr/bin/env bash
# End-to-end test of keyline-recovery (issue #6) on a whole line (scripts/lib/line.sh):
# personalize a fleet, record each device's identity, wipe flash, restore, and compare; then the
# refusals, each of which must leave every file of the device untouched.
# Usage: recovery_test.sh WORKDIR   (LINE_BIN = directory holding the keyline-* programs)
set -euo pipefail

work=${1:?usage: recovery_test.sh WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
trap line_down EXIT

rm -rf "$work"
mkdir -p "$work"
N=6  # devices 0..4 personalized, device 5 stays blank (never published)
line_up "$work/line" "$N"
REC="$LINE_BIN/keyline-recovery"
# The owner pins the public DB's log key (issue #18, docs/recovery.md section 7); the test's own state.
export KEYLINE_LOG_KEY_FILE=${LINE_LOG_KEY_FILE:?line_up keeps the log key} KEYLINE_LOG_STATE="$work/log-state"
DEV="$LINE_BIN/keyline-device"
ROOT="$LINE_DIR/pki/root.pem"
CA="$LINE_DIR/pki/tls-ca.pem"
DB_CONNINFO=${LINE_PG_CONNINFO/dbname=postgres/dbname=keyline_backupdb}

failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }

all=("${LINE_DEVICES[@]}")
LINE_DEVICES=("${all[@]:0:$((N - 1))}")
line_personalize >"$work/personalize.json"
LINE_DEVICES=("${all[@]}")
for ((i = 0; i < N - 1; i++)); do
  "$DEV" boot --dir "${LINE_DEVICE_DIRS[$i]}" >/dev/null || { cat "$work/personalize.json"; echo "FAIL device $i not personalized"; exit 1; }
done

addr() { echo "${LINE_DEVICES[$1]}"; }
ddir() { echo "${LINE_DEVICE_DIRS[$1]}"; }
chip() { "$DEV" status --dir "$(ddir "$1")" | awk '$1 == "chip_id" {print $2}'; }
# Every file of a device (ROM, fuse, flash, staging) with its SHA-256: "nothing written" means equal.
snapshot() { (cd "$(ddir "$1")" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
field() { awk -v k="$2" '$1 == k {print $2}' "$1"; }

for ((i = 0; i < N - 1; i++)); do
  "$DEV" boot --dir "$(ddir "$i")" >"$work/before-$i.txt"
done
"$DEV" status --dir "$(ddir 0)" >"$work/status-0.txt"
cat "$work/before-0.txt"

# run NAME EXPECTED_EXIT EXPECTED_TEXT DEVICE_INDEX -- command...: the exit code and message match
# and the device's files are byte for byte what they were.
expect_refusal() {
  local name=$1 want=$2 text=$3 idx=$4
  shift 5
  local before after rc=0
  before=$(snapshot "$idx")
  "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
  after=$(snapshot "$idx")
  if [ "$rc" -ne "$want" ]; then
    fail "$name: exit $rc, expected $want"; cat "$work/$name.err"; return
  fi
  if ! grep -q -- "$text" "$work/$name.err"; then
    fail "$name: message lacks '$text'"; cat "$work/$name.err"; return
  fi
  if [ "$before" != "$after" ]; then
    fail "$name: device files changed"; diff <(echo "$before") <(echo "$after") || true; return
  fi
  pass "$name (exit $rc: $(grep 'error' "$work/$name.err" | head -1))"
}

# --- the main path: wipe device 0, dry run, restore, same identity -----------------------------
"$DEV" wipe-flash --dir "$(ddir 0)" >/dev/null
if "$DEV" boot --dir "$(ddir 0)" >/dev/null 2>&1; then fail "wiped device still boots"; fi

expect_refusal dry-run-writes-nothing 0 "dry run: verified, nothing written" 0 -- \
  "$REC" restore --device "$(addr 0)" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT" --dry-run
grep -q '^written no' "$work/dry-run-writes-nothing.out" || fail "dry run output: $(cat "$work/dry-run-writes-nothing.out")"

# wrong trust anchor (c): a root of somebody else, made with openssl.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/other-root.key" \
  -out "$work/other-root.pem" -subj "/CN=Somebody Else Root/O=Other" -days 30 >/dev/null 2>&1
expect_refusal wrong-trust-anchor 3 "chain does not lead to a trusted root" 0 -- \
  "$REC" restore --device "$(addr 0)" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$work/other-root.pem"

# public DB unreachable (f): a port nobody listens on; retries with backoff, then says so.
dead=$(line_free_port)
start=$(date +%s%N)
expect_refusal db-unreachable 4 "cannot be reached (3 attempts)" 0 -- \
  "$REC" restore --device "$(addr 0)" --db "https://127.0.0.1:$dead" --ca "$CA" --trust "$ROOT" --attempts 3 --backoff-ms 200
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$elapsed" -ge 550 ] && pass "db-unreachable backed off (${elapsed} ms for 3 attempts)" || fail "db-unreachable did not back off (${elapsed} ms)"

"$REC" restore --device "$(addr 0)" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT" >"$work/restore-0.out" 2>"$work/restore-0.err" || {
  fail "restore of device 0: exit $?"; cat "$work/restore-0.err"; }
cat "$work/restore-0.err" "$work/restore-0.out"
"$DEV" boot --dir "$(ddir 0)" >"$work/after-0.txt" || fail "restored device 0 does not boot"
if cmp -s "$work/before-0.txt" "$work/after-0.txt"; then
  pass "device 0 boots with the same IMEI, key fingerprints and package after restore"
else
  fail "device 0 identity differs after restore"; diff "$work/before-0.txt" "$work/after-0.txt" || true
fi
for k in imei identity_key_sha256 transport_key_sha256; do
  [ "$(field "$work/restore-0.out" "$k")" = "$(field "$work/before-0.txt" "$k")" ] && pass "restore prints the device's $k" ||
    fail "restore printed $k $(field "$work/restore-0.out" "$k"), device had $(field "$work/before-0.txt" "$k")"
done
[ ! -e "$(ddir 0)/flash/staging.bin" ] && pass "staging area emptied after boot" || fail "staging.bin left behind"

# --- behind a TLS-terminating proxy: the read side over plain HTTP on loopback (docs/design.md section 7) ---
plain_port=$(line_free_port)
KEYLINE_BACKUPDB_DB="host=127.0.0.1 port=$(cat "$LINE_DIR/pg/port") dbname=keyline_backupdb user=keyline_backupdb password=$(cat "$LINE_DIR/backupdb.pass")" \
  "$LINE_BIN/keyline-backupdb" serve --no-log --plain-http --listen "127.0.0.1:$plain_port" --ops-listen 127.0.0.1:0 --trust "$ROOT" --log off \
  >"$work/plain.out" 2>&1 &
plain_pid=$!
line_wait_port 127.0.0.1 "$plain_port" 20 || fail "plain-HTTP public DB did not start"
expect_refusal plain-http-dry-run 0 "dry run: verified, nothing written" 0 -- \
  env -u KEYLINE_BACKUPDB_CA "$REC" restore --device "$(addr 0)" --db "http://127.0.0.1:$plain_port" --trust "$ROOT" --dry-run --no-log-check
kill "$plain_pid" 2>/dev/null; wait "$plain_pid" 2>/dev/null || true

# --- the device loses power while it boots the staged image: it keeps its previous image ------
# A second server on device 0's directory with a one-shot power cut in the next flash write.
cut_port=$(line_free_port)
"$DEV" serve --dir "$(ddir 0)" --listen "127.0.0.1:$cut_port" --power-cut-at-byte 100 --quiet \
  >"$work/cut.out" 2>"$work/cut.log" &
cut_pid=$!
line_wait_port 127.0.0.1 "$cut_port" 10 || fail "power-cut device server did not start"
image_before=$(sha256sum <"$(ddir 0)/flash/image.bin")
rc=0
"$REC" restore --device "127.0.0.1:$cut_port" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT" \
  >"$work/power-cut.out" 2>"$work/power-cut.err" || rc=$?
kill "$cut_pid" 2>/dev/null; wait "$cut_pid" 2>/dev/null || true
if [ "$rc" -eq 4 ] && grep -q "during BOOT STAGED.*keeps its previous image" "$work/power-cut.err" &&
  [ "$(sha256sum <"$(ddir 0)/flash/image.bin")" = "$image_before" ] && [ ! -e "$(ddir 0)/flash/image.bin.tmp" ]; then
  pass "power cut during BOOT STAGED: exit 4, previous image kept ($(grep error "$work/power-cut.err"))"
else
  fail "power cut during BOOT STAGED: exit $rc"; cat "$work/power-cut.err"
fi
"$REC" restore --device "$(addr 0)" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT" >"$work/restore-0b.out" 2>&1 &&
  "$DEV" boot --dir "$(ddir 0)" | cmp -s - "$work/before-0.txt" && pass "restore runs again after the power cut" ||
  { fail "second restore after the power cut"; cat "$work/restore-0b.out"; }

# --- (a) the public DB serves the record of another chip for chip 1 ---------------------------
# Records are permanent (a trigger refuses UPDATE for everyone): the test, as the database
# superuser, switches the trigger off for one forged row, as an attacker with the DB would.
# Chips 1 and 2 were never read, so the server's in-memory record cache does not hold them.
forge() {  # chip body_json
  psql "$DB_CONNINFO" -q -v ON_ERROR_STOP=1 -v chip="$1" -v body="$2" <<'SQL'
ALTER TABLE records DISABLE TRIGGER records_no_update_delete;
UPDATE records SET body_json = :'body' WHERE chip_id = :'chip';
ALTER TABLE records ENABLE TRIGGER records_no_update_delete;
SQL
}
body_of() { psql "$DB_CONNINFO" -tA -v chip="$1" <<<"SELECT body_json FROM records WHERE chip_id = :'chip'"; }
c1=$(chip 1); c2=$(chip 2); c3=$(chip 3); c4=$(chip 4); c5=$(chip 5)
forge "$c1" "$(body_of "$c4")"
"$DEV" wipe-flash --dir "$(ddir 1)" >/dev/null
expect_refusal record-of-another-chip 3 "the record is for chip $c4, but the device is chip $c1" 1 -- \
  "$REC" restore --device "$(addr 1)" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT"

# --- (b) backup bytes changed in the DB --------------------------------------------------------
# b1: one bit of the ciphertext flipped; record_hash dropped so that the record still parses: only
# the device's AES-GCM check can notice, and it must do so in the drill, before any write.
python3 - "$(body_of "$c2")" >"$work/forged-2.json" <<'PY'
import base64, json, sys
r = json.loads(sys.argv[1])
b = bytearray(base64.b64decode(r["backup"]))
b[40] ^= 0x01
r["backup"] = base64.b64encode(bytes(b)).decode()
del r["record_hash"]
print(json.dumps(r))
PY
forge "$c2" "$(cat "$work/forged-2.json")"
"$DEV" wipe-flash --dir "$(ddir 2)" >/dev/null
expect_refusal backup-bytes-altered 3 "backup package does not open on this chip" 2 -- \
  "$REC" restore --device "$(addr 2)" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT"
# b2: the same change with the record hash kept: the record itself no longer checks.
python3 - "$(body_of "$c4")" >"$work/forged-4.json" <<'PY'
import base64, json, sys
r = json.loads(sys.argv[1])
b = bytearray(base64.b64decode(r["backup"]))
b[40] ^= 0x01
r["backup"] = base64.b64encode(bytes(b)).decode()
print(json.dumps(r))
PY
forge "$c4" "$(cat "$work/forged-4.json")"
"$DEV" wipe-flash --dir "$(ddir 4)" >/dev/null
expect_refusal backup-altered-hash-kept 3 "record that does not parse" 4 -- \
  "$REC" restore --device "$(addr 4)" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT"

# --- (e) no record for a blank, never-personalized device -------------------------------------
expect_refusal no-record 7 "no record for chip $c5" 5 -- \
  "$REC" restore --device "$(addr 5)" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT"

# --- offline bundle: fetch, restore with no network, (d) corrupt bundle ------------------------
"$REC" fetch --chip-id "$c3" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT" --out "$work/bundle-3.json" 2>"$work/fetch.err" ||
  { fail "fetch: exit $?"; cat "$work/fetch.err"; }
"$DEV" wipe-flash --dir "$(ddir 3)" >/dev/null
sed 's/"backup":"\(....\)./"backup":"\1A/' "$work/bundle-3.json" >"$work/bundle-3-corrupt.json"
cmp -s "$work/bundle-3.json" "$work/bundle-3-corrupt.json" && sed -i 's/"backup":"\(....\)./"backup":"\1B/' "$work/bundle-3-corrupt.json"
head -c 200 "$work/bundle-3.json" >"$work/bundle-3-truncated.json"
(
  unset KEYLINE_BACKUPDB_URL
  expect_refusal bundle-corrupt 3 "offline bundle $work/bundle-3-corrupt.json is corrupt" 3 -- \
    "$REC" restore --device "$(addr 3)" --image "$work/bundle-3-corrupt.json" --trust "$ROOT"
  expect_refusal bundle-truncated 3 "is corrupt" 3 -- \
    "$REC" restore --device "$(addr 3)" --image "$work/bundle-3-truncated.json" --trust "$ROOT"
  expect_refusal bundle-of-another-chip 3 "the record is for chip $c3, but the device is chip $c1" 1 -- \
    "$REC" restore --device "$(addr 1)" --image "$work/bundle-3.json" --trust "$ROOT"
  expect_refusal bundle-wrong-trust 3 "chain does not lead to a trusted root" 3 -- \
    "$REC" restore --device "$(addr 3)" --image "$work/bundle-3.json" --trust "$work/other-root.pem"
  exit "$failures"
) || failures=$((failures + $?))
# The offline restore runs with the public DB stopped: no network but the device link.
kill "${LINE_PIDS[0]}" 2>/dev/null && wait "${LINE_PIDS[0]}" 2>/dev/null || true
env -u KEYLINE_BACKUPDB_URL "$REC" restore --device "$(addr 3)" --image "$work/bundle-3.json" --trust "$ROOT" --json \
  >"$work/restore-3.out" 2>"$work/restore-3.err" || { fail "offline restore: exit $?"; cat "$work/restore-3.err"; }
"$DEV" boot --dir "$(ddir 3)" >"$work/after-3.txt" || fail "device 3 does not boot after offline restore"
cmp -s "$work/before-3.txt" "$work/after-3.txt" && pass "device 3 restored offline with the same identity" ||
  { fail "device 3 identity differs"; diff "$work/before-3.txt" "$work/after-3.txt" || true; }
grep -q "\"imei\":\"$(field "$work/before-3.txt" imei)\"" "$work/restore-3.out" && pass "offline restore --json names the IMEI" ||
  fail "offline restore --json: $(cat "$work/restore-3.out")"

# --- usage -------------------------------------------------------------------------------------
rc=0; "$REC" restore --trust "$ROOT" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] && pass "missing --device is a usage error (2)" || fail "missing --device: exit $rc"
"$REC" --help | grep -q "7  no record for this chip" && pass "--help lists the exit codes" || fail "--help lacks exit codes"

echo "recovery e2e: $failures failure(s)"
[ "$failures" -eq 0 ]
