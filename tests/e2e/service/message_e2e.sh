#!/usr/bin/env bash
# End-to-end test of `keyline-service message` (docs/service.md "Messages from a third party") on a
# whole line (scripts/lib/line.sh): the station publishes each record with its transport certificate
# third; a message sealed by IMEI with the key from the public DB opens on that device only (bytes
# equal), not on another, and again after device 0 is restored from that record by keyline-recovery
# (log check included); an unknown IMEI is exit 3 (8050), a public DB that does not answer exit 4; a
# rewriting proxy in front of the public DB (rewrite_proxy.py, holding its TLS key) that swaps the
# record's transport certificate for another device's, or strips it, is refused: exit 3, nothing written.
# Symlinks planted at OUT and OUT.tmp are not followed; a full file system is a non-zero exit, nothing left.
# Usage: message_e2e.sh WORKDIR   (LINE_BIN = directory holding the keyline-* programs)
set -euo pipefail

work=${1:?usage: message_e2e.sh WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
trap line_down EXIT

rm -rf "$work"
mkdir -p "$work"
line_up "$work/line" 2
line_personalize >"$work/personalize.json"
DEV="$LINE_BIN/keyline-device"
SVC="$LINE_BIN/keyline-service"
CA="$LINE_DIR/pki/tls-ca.pem"
ROOT="$LINE_DIR/pki/root.pem"
failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
ddir() { echo "${LINE_DEVICE_DIRS[$1]}"; }
imei() { "$DEV" status --dir "$(ddir "$1")" | awk '$1 == "imei" {print $2}'; }
I0=$(imei 0)
I1=$(imei 1)
# message IMEI OUT URL [extra...]: keyline-service message; its exit code in $rc, stderr in $work/err
message() {
  local i=$1 out=$2 url=$3
  shift 3
  rc=0
  "$SVC" message --imei "$i" --in "$work/msg.bin" --out "$out" --backupdb "$url" --backupdb-ca "$CA" \
    --trust "$ROOT" "$@" >"$work/out" 2>"$work/err" || rc=$?
}

n=$(curl -sf --cacert "$CA" "$LINE_BACKUPDB_URL/v1/imei/$I0" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["certificates"]))')
[ "$n" = 3 ] && pass "the station published [identity, Device CA, transport]" || fail "record holds $n certificates"

head -c 5000 /dev/urandom >"$work/msg.bin"
message "$I0" "$work/msg.sealed" "$LINE_BACKUPDB_URL"
if [ "$rc" -eq 0 ] && [ "$(stat -c %a "$work/msg.sealed")" = 644 ] &&
  [ "$(stat -c %s "$work/msg.sealed")" -eq $((5000 + 48)) ]; then pass "sealed: $(cat "$work/out")"
else fail "message: exit $rc $(cat "$work/err")"; fi
rc=0
"$DEV" service-agent open --dir "$(ddir 0)" --in "$work/msg.sealed" --out "$work/opened.bin" >"$work/open.out" 2>&1 || rc=$?
[ "$rc" -eq 0 ] && cmp -s "$work/msg.bin" "$work/opened.bin" && [ "$(stat -c %a "$work/opened.bin")" = 600 ] &&
  pass "device 0 opens it, bytes equal" || fail "device 0 open: exit $rc $(cat "$work/open.out")"
# Recovery from the 3-certificate record: device 0 wiped, restored from the public DB, boots and opens
# the message again (the restored flash image carries the transport certificate as a third certificate).
"$DEV" wipe-flash --dir "$(ddir 0)" >/dev/null
rc=0
KEYLINE_LOG_STATE="$work/log-state" "$LINE_BIN/keyline-recovery" restore --device "${LINE_DEVICES[0]}" \
  --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT" --log-key-file "$LINE_LOG_KEY_FILE" >"$work/restore.out" 2>&1 || rc=$?
rm -f "$work/opened.bin"
[ "$rc" -eq 0 ] && "$DEV" boot --dir "$(ddir 0)" >/dev/null 2>&1 &&
  "$DEV" service-agent open --dir "$(ddir 0)" --in "$work/msg.sealed" --out "$work/opened.bin" >/dev/null 2>&1 &&
  cmp -s "$work/msg.bin" "$work/opened.bin" && pass "restored from the 3-certificate record, device 0 boots and opens it" ||
  fail "restore: exit $rc $(tail -3 "$work/restore.out")"
rc=0
"$DEV" service-agent open --dir "$(ddir 1)" --in "$work/msg.sealed" --out "$work/wrong.bin" >"$work/open1.out" 2>&1 || rc=$?
[ "$rc" -eq 3 ] && [ ! -e "$work/wrong.bin" ] && pass "device 1 cannot open it (exit 3)" ||
  fail "device 1 open: exit $rc $(cat "$work/open1.out")"

# A symlink planted where the old fixed temporary name was (OUT.tmp) and at OUT itself: neither is
# followed (the temporary file is mkstemp's, OUT is replaced by rename), the victim keeps its bytes.
echo "victim bytes" >"$work/victim"
ln -s "$work/victim" "$work/planted.sealed.tmp"
ln -s "$work/victim" "$work/planted.sealed"
message "$I0" "$work/planted.sealed" "$LINE_BACKUPDB_URL"
[ "$rc" -eq 0 ] && [ "$(cat "$work/victim")" = "victim bytes" ] && [ ! -L "$work/planted.sealed" ] &&
  [ "$(stat -c %s "$work/planted.sealed")" -eq $((5000 + 48)) ] && [ -z "$(ls -A "$work" | grep '^\.planted')" ] &&
  pass "planted symlinks at OUT and OUT.tmp not followed" || fail "planted symlink: exit $rc $(cat "$work/err")"
# A full file system (a 12 KiB tmpfs, when this user may mount): non-zero exit, no OUT, no temporary.
mkdir -p "$work/small"
if mount -t tmpfs -o size=12k tmpfs "$work/small" 2>/dev/null; then
  head -c 60000 /dev/urandom >"$work/big.bin"
  rc=0
  "$SVC" message --imei "$I0" --in "$work/big.bin" --out "$work/small/big.sealed" --backupdb "$LINE_BACKUPDB_URL" \
    --backupdb-ca "$CA" --trust "$ROOT" >"$work/out" 2>"$work/err" || rc=$?
  left=$(ls -A "$work/small")
  umount "$work/small"
  [ "$rc" -ne 0 ] && [ -z "$left" ] && pass "full file system: exit $rc, nothing left ($(cat "$work/err"))" ||
    fail "full file system: exit $rc, left: $left"
else
  echo "SKIP full file system: cannot mount a tmpfs here"
fi

# An IMEI the public DB does not know (Luhn-valid, never personalized): 8050, exit 3, nothing written.
message 490154203237518 "$work/unknown.sealed" "$LINE_BACKUPDB_URL"
[ "$rc" -eq 3 ] && grep -q "error 8050" "$work/err" && [ ! -e "$work/unknown.sealed" ] &&
  pass "unknown IMEI: exit 3 ($(cat "$work/err"))" || fail "unknown IMEI: exit $rc $(cat "$work/err")"
# A public DB that does not answer: exit 4.
message "$I0" "$work/down.sealed" "https://127.0.0.1:$(line_free_port)"
[ "$rc" -eq 4 ] && [ ! -e "$work/down.sealed" ] && pass "public DB unreachable: exit 4" ||
  fail "unreachable: exit $rc $(cat "$work/err")"
# A root the record does not chain to: exit 3 (8002).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/other.key" \
  -out "$work/other-root.pem" -subj "/CN=Other Root" -days 30 2>/dev/null
rc=0
"$SVC" message --imei "$I0" --in "$work/msg.bin" --out "$work/other.sealed" --backupdb "$LINE_BACKUPDB_URL" \
  --backupdb-ca "$CA" --trust "$work/other-root.pem" >"$work/out" 2>"$work/err" || rc=$?
[ "$rc" -eq 3 ] && grep -q "error 8002" "$work/err" && [ ! -e "$work/other.sealed" ] &&
  pass "another root: exit 3" || fail "another root: exit $rc $(cat "$work/err")"

# The rewriting proxy (it holds the public DB's TLS key): device 0's record with device 1's transport
# certificate, hash recomputed; then the same record without its third certificate.
proxy() {  # MODE: starts the proxy, sets $purl
  local pport
  pport=$(line_free_port)
  python3 "$here/rewrite_proxy.py" "$pport" "${LINE_BACKUPDB_URL#https://}" "$LINE_DIR/pki/backupdb-tls.pem" \
    "$LINE_DIR/pki/backupdb-tls.key" "$CA" "$1" "$I0" "$I1" >"$work/proxy-$1.out" 2>&1 &
  LINE_PIDS+=($!)
  line_wait_port 127.0.0.1 "$pport" 20 || fail "proxy $1 did not start: $(cat "$work/proxy-$1.out")"
  purl="https://127.0.0.1:$pport"
}
proxy swap
swapped=$(curl -sf --cacert "$CA" "$purl/v1/imei/$I0" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["certificates"][2][:200])')
donor=$(curl -sf --cacert "$CA" "$LINE_BACKUPDB_URL/v1/imei/$I1" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["certificates"][2][:200])')
[ -n "$swapped" ] && [ "$swapped" = "$donor" ] && pass "the proxy serves device 0's record with device 1's transport certificate" ||
  fail "the proxy does not swap"
message "$I0" "$work/swapped.sealed" "$purl"
[ "$rc" -eq 3 ] && grep -q "error 8002" "$work/err" && grep -q "transport certificate chip ID" "$work/err" &&
  [ ! -e "$work/swapped.sealed" ] && [ ! -e "$work/swapped.sealed.tmp" ] &&
  pass "swapped transport certificate refused, nothing written ($(cat "$work/err"))" ||
  fail "swapped: exit $rc $(cat "$work/err")"
# The control: through the same proxy, device 1's record (not rewritten) seals.
message "$I1" "$work/via-proxy.sealed" "$purl"
rc1=$rc
rc=0
"$DEV" service-agent open --dir "$(ddir 1)" --in "$work/via-proxy.sealed" --out "$work/opened1.bin" >/dev/null 2>&1 || rc=$?
[ "$rc1" -eq 0 ] && [ "$rc" -eq 0 ] && cmp -s "$work/msg.bin" "$work/opened1.bin" &&
  pass "control: via the proxy, device 1's message seals and opens on device 1" || fail "control via proxy: $rc1 $rc"
proxy strip
message "$I0" "$work/stripped.sealed" "$purl"
[ "$rc" -eq 3 ] && grep -q "no transport certificate" "$work/err" && [ ! -e "$work/stripped.sealed" ] &&
  pass "record without a transport certificate refused (exit 3)" || fail "stripped: exit $rc $(cat "$work/err")"

[ "$failures" -eq 0 ] && echo "e2e.service.message: all passed" || { echo "e2e.service.message: $failures failed"; exit 1; }
