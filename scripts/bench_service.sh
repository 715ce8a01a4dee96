#!/usr/bin/env bash
# Benchmark of the device service server (issue #16), called by scripts/bench.sh (part "service").
#
#   scripts/bench_service.sh [BUILD_DIR]
#
# bench_service (tests/integration/service/bench_service_main.cpp) runs keyline-service in process on a
# private PostgreSQL cluster and SoftHSM token, 32 device agents over HTTPS, each session one item push
# (SELECT, INITIALIZE UPDATE, EXTERNAL AUTHENTICATE, STORE DATA, GET STATUS; version 2 keys derived on
# the token), and as the reference the same 32 clients doing a session's three HTTPS round trips to
# /healthz. Prints sessions/s, p50/p99 and the ratio. KEYLINE_BENCH_SECONDS (10) per measurement.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build}
driver=$build/bin/bench_service
seconds=${KEYLINE_BENCH_SECONDS:-10}
dir=${KEYLINE_BENCH_SERVICE_DIR:-$repo/.keyline/bench/service}
[ -x "$driver" ] || { echo "bench_service: $driver not built" >&2; exit 2; }
mkdir -p "$dir"
cleanup() { "$repo/scripts/pg.sh" stop "$dir/pg" >/dev/null 2>&1 || true; "$repo/scripts/hsm.sh" remove "$dir/hsm" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$repo/scripts/pg.sh" start "$dir/pg" >/dev/null
"$repo/scripts/hsm.sh" init "$dir/hsm" >/dev/null
KEYLINE_TESTENV=$dir "$driver" "$seconds"
