#!/bin/bash
# PC/SC check of the emulated device: a private pcscd with Debian's vsmartcard vpcd driver
# (tests/support/pcscd.sh: own mount namespace, own socket), `keyline-device serve --vpcd`
# connected to it, and `opensc-tool -s 80CA9F7F00` must print the CPLC and 9000.
# Usage: pcsc_test.sh <keyline-device> <work dir>. Exit 77 (ctest skip) only when pcscd cannot run here.
set -u
BIN=$1
WORK=$2
PCSCD="$(dirname "$0")/../../support/pcscd.sh"
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; [ -f "$WORK/pcscd/pcscd.log" ] && tail -n 30 "$WORK/pcscd/pcscd.log"; exit 1; }

command -v opensc-tool >/dev/null || skip "opensc-tool is not installed (Debian package opensc)"
rm -rf "$WORK"
mkdir -p "$WORK"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; "$PCSCD" stop "$WORK/pcscd"; }
trap cleanup EXIT
"$PCSCD" start "$WORK/pcscd" 1 >"$WORK/pcscd.out"
rc=$?
[ $rc -eq 77 ] && skip "$(cat "$WORK/pcscd.out")"
[ $rc -eq 0 ] || fail "private pcscd did not start"
export "$(cat "$WORK/pcscd/env")"
READER=$(head -n 1 "$WORK/pcscd/readers")
PORT=${READER##* }
READER=${READER% *}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=pcsc test root" \
  -keyout "$WORK/root.key" -out "$WORK/root.pem" -days 1 2>/dev/null || fail "openssl could not make a root"
"$BIN" make --dir "$WORK/dev" --rom-ca "$WORK/root.pem" >"$WORK/make.out" || fail "make failed"
CHIP=$(cut -d' ' -f1 "$WORK/make.out")
"$BIN" serve --dir "$WORK/dev" --vpcd "127.0.0.1:$PORT" >"$WORK/device.log" 2>&1 &
PIDS+=($!)

OUT=""
# Up to 30 s: under a loaded CI machine pcscd can take a while to bring up the vpcd reader.
for _ in $(seq 150); do
  OUT=$(opensc-tool -r "$READER" -s 80CA9F7F00 2>&1) && echo "$OUT" | grep -q "SW1=0x90, SW2=0x00" && break
  sleep 0.2
done
echo "$OUT"
echo "$OUT" | grep -q "SW1=0x90, SW2=0x00" || { cat "$WORK/device.log"; fail "no 9000 from the emulator"; }
# opensc-tool prints 16 bytes a line ("XX " each, 48 columns), then their ASCII.
HEX=$(echo "$OUT" | grep -E '^[0-9A-F]{2} ' | cut -c1-48 | tr -d ' \n')
[ "${HEX:0:6}" = "9F7F2A" ] || fail "response is not a tagged CPLC: $HEX"
# Chip ID = fabricator, type (CPLC offsets 0, 2) || serial (12) || batch (16)
CPLC=${HEX:6:84}
GOT="${CPLC:0:8}${CPLC:24:12}"
[ "$GOT" = "$CHIP" ] || fail "chip ID in the CPLC ($GOT) differs from the device's ($CHIP)"
# A probe the tools send: an unknown INS must answer 6D00 quickly.
opensc-tool -r "$READER" -s 803C0000 2>&1 | grep -q "SW1=0x6D, SW2=0x00" || fail "unknown INS did not answer 6D00"
echo "PASS: CPLC $CHIP and 9000 through pcscd/vpcd"
