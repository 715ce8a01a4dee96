#!/usr/bin/env bash
# keyline-recovery through a PC/SC reader (issue #13, docs/recovery.md "Through a PC/SC reader"):
# devices personalized over TCP, flash wiped, then plugged as cards into the readers of a private
# pcscd (vsmartcard's vpcd driver) and restored with `restore --reader`; they boot with the same
# identity. Then what an owner sees when the name matches no reader or several, when the reader is
# empty, when the card is pulled out mid-restore, and when pcscd is down.
# Usage: pcsc_restore.sh WORKDIR   (LINE_BIN = directory holding the keyline-* programs)
# Exit 77 (ctest: skipped) only when tests/support/pcscd.sh says a private pcscd cannot run here
# (not root, no unshare, pcscd or vpcd missing), and it says why.
set -euo pipefail

work=${1:?usage: pcsc_restore.sh WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"

rm -rf "$work"
mkdir -p "$work"
SERVE_PIDS=()
PCSCD_DIR=
pcscd_stop() { [ -z "$PCSCD_DIR" ] || "$top/tests/support/pcscd.sh" stop "$PCSCD_DIR"; PCSCD_DIR=; }
cleanup() {
  local p
  for p in "${SERVE_PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  pcscd_stop
  line_down
}
trap cleanup EXIT

# --- a private pcscd with two vpcd readers (tests/support/pcscd.sh, docs/readers.md) -------------
rc=0
"$top/tests/support/pcscd.sh" start "$work/pcscd" 2 >"$work/pcscd.out" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "SKIP e2e.recovery.pcsc: the test's own pcscd cannot start here (exit $rc): $(tr '\n' ' ' <"$work/pcscd.out")"
  [ "$rc" -eq 77 ] && exit 77
  exit 1
fi
PCSCD_DIR="$work/pcscd"
export "$(cat "$PCSCD_DIR/env")"
READER0=$(sed -n '1s/ [0-9]*$//p' "$PCSCD_DIR/readers"); PORT0=$(sed -n '1s/.* //p' "$PCSCD_DIR/readers")
READER1=$(sed -n '2s/ [0-9]*$//p' "$PCSCD_DIR/readers"); PORT1=$(sed -n '2s/.* //p' "$PCSCD_DIR/readers")

failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }

N=2
line_up "$work/line" "$N"
REC="$LINE_BIN/keyline-recovery"
DEV="$LINE_BIN/keyline-device"
ROOT="$LINE_DIR/pki/root.pem"
CA="$LINE_DIR/pki/tls-ca.pem"
line_personalize >"$work/personalize.json"
# The fleet's TCP server stops: from here on the devices are reached only as cards in the readers.
kill "${LINE_PIDS[1]}" && wait "${LINE_PIDS[1]}" 2>/dev/null || true
ddir() { echo "${LINE_DEVICE_DIRS[$1]}"; }
for ((i = 0; i < N; i++)); do
  "$DEV" boot --dir "$(ddir "$i")" >"$work/before-$i.txt" || { cat "$work/personalize.json"; fail "device $i not personalized"; exit 1; }
  "$DEV" wipe-flash --dir "$(ddir "$i")" >/dev/null
  if "$DEV" boot --dir "$(ddir "$i")" >/dev/null 2>&1; then fail "wiped device $i still boots"; fi
done

# plug INDEX PORT [flags]: the device as a card in the reader of that vpcd port; sets PLUG_PID.
plug() {
  local idx=$1 port=$2
  shift 2
  "$DEV" serve --dir "$(ddir "$idx")" --vpcd "127.0.0.1:$port" --quiet "$@" >"$work/plug-$idx.log" 2>&1 &
  PLUG_PID=$!
  SERVE_PIDS+=("$PLUG_PID")
}
unplug() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
restore() { "$REC" restore --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT" --log-key-file "$LINE_LOG_KEY_FILE" \
  --log-state "$work/log-state" "$@"; }
same_identity() {  # INDEX NAME
  if "$DEV" boot --dir "$(ddir "$1")" >"$work/after-$1.txt" && cmp -s "$work/before-$1.txt" "$work/after-$1.txt"; then
    pass "$2: device $1 boots with the same IMEI, key fingerprints and package"
  else
    fail "$2: device $1 identity differs after restore"; diff "$work/before-$1.txt" "$work/after-$1.txt" || true
  fi
}
# expect NAME EXIT TEXT -- command...: exit code and message as the owner reads them.
expect() {
  local name=$1 want=$2 text=$3 rc=0
  shift 4
  "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
  if [ "$rc" -eq "$want" ] && grep -q -- "$text" "$work/$name.err"; then
    pass "$name (exit $rc: $(grep error "$work/$name.err" | head -1))"
  else
    fail "$name: exit $rc (expected $want), message lacks '$text'?"; cat "$work/$name.err"
  fi
}

# --- the main path: card in, restore by a part of the reader's name --------------------------
plug 0 "$PORT0"
p0=$PLUG_PID
rc=0
restore --reader "${READER0#keyline }" --card-wait 15 >"$work/restore-0.out" 2>"$work/restore-0.err" || rc=$?
cat "$work/restore-0.err" "$work/restore-0.out"
if [ "$rc" -eq 0 ] && grep -q "device pcsc:$READER0 is chip" "$work/restore-0.err"; then
  pass "restore --reader: exit 0 through pcsc:$READER0"
else
  fail "restore --reader: exit $rc"
fi
same_identity 0 "PC/SC restore"

# --- a reader without a card is waited for, and the owner is told ------------------------------
rm -f "$work/restore-1.err"
restore --reader "$READER1" --card-wait 20 >"$work/restore-1.out" 2>"$work/restore-1.err" &
rpid=$!
for ((i = 0; i < 100; i++)); do grep -q "waiting up to 20 s" "$work/restore-1.err" 2>/dev/null && break; sleep 0.1; done
grep -q "no card in reader \"$READER1\": waiting up to 20 s" "$work/restore-1.err" && pass "empty reader: the wait is said" ||
  fail "empty reader: no wait message ($(cat "$work/restore-1.err"))"
plug 1 "$PORT1"
p1=$PLUG_PID
rc=0; wait "$rpid" || rc=$?
[ "$rc" -eq 0 ] && pass "the card put in while waiting is restored" || { fail "restore after the wait: exit $rc"; cat "$work/restore-1.err"; }
same_identity 1 "PC/SC restore after waiting for the card"

# --- names that match no reader, or several ---------------------------------------------------
expect no-reader-matches 4 "error 1422: no PC/SC reader matches \"no such reader\" (readers: \"$READER0\", \"$READER1\")" -- \
  restore --reader "no such reader"
expect several-readers-match 2 "matches 2 readers (\"$READER0\", \"$READER1\")" -- restore --reader "keyline vpcd*"
expect device-and-reader 2 "excludes" -- restore --reader "$READER0" --device 127.0.0.1:1
expect neither-device-nor-reader 2 "exactly one of --device HOST:PORT or --reader NAME" -- restore

# --- an empty reader past --card-wait ----------------------------------------------------------
unplug "$p1"
sleep 0.5
start=$(date +%s%N)
expect empty-reader 4 "error 1423: no card in reader \"$READER1\" after 1 s" -- restore --reader "$READER1" --card-wait 1
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$elapsed" -ge 900 ] && [ "$elapsed" -lt 8000 ] && pass "empty reader waited ${elapsed} ms for --card-wait 1" ||
  fail "empty reader waited ${elapsed} ms for --card-wait 1"

# --- the card pulled out in the middle of the restore: exit 4, restore runs again --------------
unplug "$p0"
"$DEV" wipe-flash --dir "$(ddir 0)" >/dev/null
sleep 0.5
plug 0 "$PORT0" --drop-after-bytes 2000
rc=0
restore --reader "$READER0" --card-wait 15 >"$work/pulled.out" 2>"$work/pulled.err" || rc=$?
unplug "$PLUG_PID"
if [ "$rc" -eq 4 ] && grep -Eq "error (142[0-5]|5004): lost the device at pcsc:$READER0 during" "$work/pulled.err"; then
  pass "card pulled out mid-restore: exit 4 ($(grep error "$work/pulled.err"))"
else
  fail "card pulled out mid-restore: exit $rc"; cat "$work/pulled.err"
fi
sleep 0.5
plug 0 "$PORT0"
restore --reader "$READER0" --card-wait 15 >"$work/again.out" 2>"$work/again.err" || { fail "restore again: exit $?"; cat "$work/again.err"; }
same_identity 0 "restore again after the card was pulled out"

# --- pcscd down ----------------------------------------------------------------------------------
pcscd_stop
expect pcscd-down 4 "error 1421: " -- restore --reader "$READER0" --card-wait 1
grep -qi "pcscd" "$work/pcscd-down.err" && pass "pcscd down: the message names pcscd" || fail "pcscd down: $(cat "$work/pcscd-down.err")"

"$REC" restore --help | grep -q -- "--reader" && pass "--help shows --reader" || fail "--help lacks --reader"

echo "recovery pcsc e2e: $failures failure(s)"
[ "$failures" -eq 0 ]
