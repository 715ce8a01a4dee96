#!/bin/bash
# PC/SC check of the emulated device: a pcscd of its own (own reader.conf.d with Debian's
# vsmartcard vpcd driver on a free port), `keyline-device serve --vpcd` connected to it, and
# `opensc-tool -s 80CA9F7F00` must print the CPLC and 9000. pcscd is started and stopped here.
# Usage: pcsc_test.sh <keyline-device> <work dir>. Exit 77 (ctest skip) only when pcscd cannot run here.
set -u
BIN=$1
WORK=$2
DRIVER=/usr/lib/pcsc/drivers/serial/libifdvpcd.so
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; [ -f "$WORK/pcscd.log" ] && tail -n 30 "$WORK/pcscd.log"; exit 1; }

command -v pcscd >/dev/null || skip "pcscd is not installed (Debian package pcscd)"
command -v opensc-tool >/dev/null || skip "opensc-tool is not installed (Debian package opensc)"
[ -f "$DRIVER" ] || skip "vpcd driver missing (Debian package vsmartcard-vpcd)"

rm -rf "$WORK"
mkdir -p "$WORK/conf.d"
# A free port below the ephemeral range (32768-60999): a port the kernel hands out (bind to 0) can be
# taken as the local end of another test's outgoing connection before the vpcd driver binds it.
PORT=$(python3 -c '
import random, socket
while True:
    p = random.randint(10000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()')
# The vpcd driver takes its TCP port from DEVICENAME (/dev/null:<port>); see /etc/reader.conf.d/vpcd.
cat >"$WORK/conf.d/vpcd" <<CONF
FRIENDLYNAME "keyline vpcd"
DEVICENAME   /dev/null:$PORT
LIBPATH      $DRIVER
CHANNELID    $PORT
CONF
# pcsc-lite 1.9.9 (Debian 12) honours PCSCLITE_CSOCK_NAME only in clients; the daemon uses
# /run/pcscd/pcscd.comm. Refuse to disturb a pcscd that is already running there.
SOCK=/run/pcscd/pcscd.comm
if [ -S "$SOCK" ] && pgrep -x pcscd >/dev/null; then
  skip "another pcscd is running on $SOCK; not starting a second one"
fi
export PCSCLITE_CSOCK_NAME="$SOCK"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; }
trap cleanup EXIT

mkdir -p /run/pcscd 2>/dev/null
pcscd -f -d -c "$WORK/conf.d" >"$WORK/pcscd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do
  grep -q "daemon ready" "$WORK/pcscd.log" && [ -S "$SOCK" ] && break
  kill -0 "${PIDS[0]}" 2>/dev/null || skip "pcscd cannot start here: $(tail -n 3 "$WORK/pcscd.log" | tr '\n' ' ')"
  sleep 0.1
done
[ -S "$SOCK" ] || skip "pcscd did not open its socket $SOCK"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=pcsc test root" \
  -keyout "$WORK/root.key" -out "$WORK/root.pem" -days 1 2>/dev/null || fail "openssl could not make a root"
"$BIN" make --dir "$WORK/dev" --rom-ca "$WORK/root.pem" >"$WORK/make.out" || fail "make failed"
CHIP=$(cut -d' ' -f1 "$WORK/make.out")
"$BIN" serve --dir "$WORK/dev" --vpcd "127.0.0.1:$PORT" >"$WORK/device.log" 2>&1 &
PIDS+=($!)

OUT=""
# Up to 30 s: under a loaded CI machine pcscd can take a while to bring up the vpcd reader.
for _ in $(seq 150); do
  OUT=$(opensc-tool -s 80CA9F7F00 2>&1) && echo "$OUT" | grep -q "SW1=0x90, SW2=0x00" && break
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
opensc-tool -s 80500000 2>&1 | grep -q "SW1=0x6D, SW2=0x00" || fail "unknown INS did not answer 6D00"
echo "PASS: CPLC $CHIP and 9000 through pcscd/vpcd"
