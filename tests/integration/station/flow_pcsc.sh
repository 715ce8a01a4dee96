#!/bin/bash
# integration_station_pcsc: the personalization flow through PC/SC readers. A private pcscd with 4
# vpcd readers (tests/support/pcscd.sh), then the doctest program, which puts emulated cards in them.
# Usage: flow_pcsc.sh <integration_station_pcsc> <keyline-device> <work dir>. Exit 77 only when a
# private pcscd cannot run here (pcscd.sh says why).
set -u
TEST=$1
export KEYLINE_DEVICE_BIN=$2
WORK=$3
source "$(dirname "$0")/../../support/pcscd_env.sh"
rm -rf "$WORK"
mkdir -p "$WORK"
trap pcsc_down EXIT
pcsc_up "$WORK/pcscd" 4 || exit $?
export KEYLINE_PCSC_DIR="$PCSC_DIR" KEYLINE_PCSC_WORK="$WORK"
"$TEST" || { echo "FAIL: see the device logs in $WORK"; exit 1; }
