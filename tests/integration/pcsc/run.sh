#!/bin/bash
# integration_pcsc: a private pcscd with 4 vpcd readers (tests/support/pcscd.sh), then the doctest
# program test_pcsc twice: every case with pcscd running, then "no service" once it is stopped.
# Usage: run.sh <integration_pcsc> <keyline-device> <work dir>. Exit 77 only when pcscd cannot run here.
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
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=pcsc test root" \
  -keyout "$WORK/root.key" -out "$WORK/root.pem" -days 1 2>/dev/null || { echo "FAIL: openssl"; exit 1; }
"$TEST" -tce="no service*" || { echo "FAIL: see the device logs in $WORK"; exit 1; }
"$PCSCD" stop "$KEYLINE_PCSC_DIR"
KEYLINE_PCSC_STOPPED=1 "$TEST" -tc="no service*"
