#!/usr/bin/env bash
# The test command: installs what is missing, builds, then runs every test with ctest against a real
# PostgreSQL cluster and a real SoftHSM2 token (ctest fixtures), plus an ASan+UBSan build of the
# unit tests and fuzz replays. Exits non-zero on any failure; ends with ctest's own summary.
#
#   scripts/test.sh            everything
#   scripts/test.sh -R regex   only tests matching regex (main build only)
#   KEYLINE_SKIP_SANITIZE=1    skip the sanitizer build (local iteration)
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

"$top/scripts/setup.sh"

jobs=$(nproc)
cleanup() {
  # ctest runs fixture cleanup itself; this catches a killed ctest so no cluster is left behind.
  "$top/scripts/pg.sh" stop "$top/build/testenv/pg" >/dev/null 2>&1 || true
}
trap cleanup EXIT

status=0
if [ -z "${KEYLINE_SKIP_SANITIZE:-}" ] && [ $# -eq 0 ]; then
  echo "test: sanitizer build (ASan+UBSan) of the unit tests and fuzz replays"
  if [ ! -f build-asan/build.ninja ]; then
    cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKEYLINE_SANITIZE=ON -DKEYLINE_UNIT_ONLY=ON >/dev/null
  fi
  cmake --build build-asan -j"$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan -L unit -j"$jobs" --output-on-failure --timeout 300 || status=1
fi

echo "test: main build, unit + integration + e2e"
ctest --test-dir build -j"$jobs" --output-on-failure --timeout 900 "$@" || status=1
exit $status
