#!/bin/bash
# integration_pcsc: a private pcscd with 4 vpcd readers (tests/support/pcscd.sh), then the doctest
# program test_pcsc twice: every case with pcscd running, then "no service" once it is stopped.
# Usage: run.sh <integration_pcsc> <keyline-device> <work dir>. Exit 77 only when pcscd cannot run here.
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
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=pcsc test root" \
  -keyout "$WORK/root.key" -out "$WORK/root.pem" -days 1 2>/dev/null || { echo "FAIL: openssl"; exit 1; }
"$TEST" -tce="no service*" || { echo "FAIL: see the device logs in $WORK"; exit 1; }
pcsc_down
KEYLINE_PCSC_STOPPED=1 "$TEST" -tc="no service*"
