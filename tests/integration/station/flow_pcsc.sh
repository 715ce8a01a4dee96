#!/bin/bash
# integration_station_pcsc: the personalization flow through PC/SC readers. A private pcscd with 4
# vpcd readers (tests/support/pcscd.sh), then the doctest program, which puts emulated cards in them.
# Usage: flow_pcsc.sh <integration_station_pcsc> <keyline-device> <work dir>. Exit 77 only when a
# private pcscd cannot run here (pcscd.sh says why).
set -u
TEST=$1
export KEYLINE_DEVICE_BIN=$2
WORK=$3
PCSCD="$(dirname "$0")/../../support/pcscd.sh"
rm -rf "$WORK"
mkdir -p "$WORK"
export KEYLINE_PCSC_DIR="$WORK/pcscd" KEYLINE_PCSC_WORK="$WORK"
trap '"$PCSCD" stop "$KEYLINE_PCSC_DIR"' EXIT
"$PCSCD" start "$KEYLINE_PCSC_DIR" 4 >"$WORK/pcscd.out" 2>&1
rc=$?
if [ $rc -ne 0 ]; then cat "$WORK/pcscd.out"; exit $rc; fi
export "$(cat "$KEYLINE_PCSC_DIR/env")"
"$TEST" || { echo "FAIL: see the device logs in $WORK"; exit 1; }
