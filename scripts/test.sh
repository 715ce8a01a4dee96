#!/usr/bin/env bash
# The test command: installs what is missing, builds, then runs every test with ctest against a real
# PostgreSQL cluster and a real SoftHSM2 token (ctest fixtures), plus one clang ASan+UBSan build
# (build-fuzz) that runs the unit tests and fuzz replays and the libFuzzer targets. Exits non-zero on any
# failure; ends with ctest's own summary.
#
#   scripts/test.sh            everything
#   scripts/test.sh -R regex   only tests matching regex (main build only)
#   KEYLINE_SKIP_SANITIZE=1    skip the sanitizer run of the unit tests and replays (local iteration)
#   KEYLINE_SKIP_FUZZ=1        skip the libFuzzer runs
#   KEYLINE_FUZZ_SECONDS=N     seconds per fuzz target (default 10; two targets run at a time)
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
# One clang build serves the sanitizers and libFuzzer (top CMakeLists.txt, KEYLINE_FUZZ): every library is
# compiled with ASan+UBSan and the fuzzer's coverage hooks (-fsanitize=fuzzer-no-link), fuzz_* link the
# libFuzzer driver, the unit tests and replay_* only the sanitizer runtimes (which answer the hooks).
# Inputs that add coverage go to build-fuzz/corpus-new/<target>/ (the first corpus directory, the only one
# libFuzzer writes), never into the source tree (docs/decisions.md, "Fuzzing in the test command"); the
# seed corpus is read only.
# -O1, as libFuzzer's documentation builds its targets: cheaper to compile than RelWithDebInfo's -O2.
# -gline-tables-only: the file:line (and inlined frames) of sanitizer reports, without full debug info,
# which costs ~10% more compile time and larger objects to link.
configure_fuzz() {
  if [ ! -f build-fuzz/build.ninja ]; then
    CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKEYLINE_FUZZ=ON \
      -DKEYLINE_UNIT_ONLY=ON "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only -DNDEBUG" >/dev/null
  fi
  cmake -S . -B build-fuzz >/dev/null  # picks up tests and fuzz targets added since the last configure
}
if [ $# -eq 0 ] && { [ -z "${KEYLINE_SKIP_SANITIZE:-}" ] || [ -z "${KEYLINE_SKIP_FUZZ:-}" ]; }; then
  configure_fuzz
fi
if [ -z "${KEYLINE_SKIP_SANITIZE:-}" ] && [ $# -eq 0 ]; then
  echo "test: sanitizer run (clang ASan+UBSan, build-fuzz) of the unit tests and fuzz replays"
  cmake --build build-fuzz -j"$jobs" --target keyline_unit_binaries  # what ctest -L unit runs, no programs
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-fuzz -L unit -j"$jobs" --output-on-failure --timeout 300 || status=1
fi

# libFuzzer: every fuzz_<target> (tests/CMakeLists.txt keyline_fuzz_target) for a bounded time.
run_fuzz() {
  local secs=${KEYLINE_FUZZ_SECONDS:-10} out=build-fuzz/fuzz-run
  local targets
  mapfile -t targets < <(ninja -C build-fuzz -t targets all | sed -n 's/^\(fuzz_[a-z0-9_]*\): .*/\1/p' | sort -u)
  [ ${#targets[@]} -gt 0 ] || { echo "test: no fuzz targets found"; return 1; }
  cmake --build build-fuzz -j"$jobs" --target "${targets[@]}"
  rm -rf "$out" && mkdir -p "$out"
  echo "test: fuzzing ${#targets[@]} targets, ${secs} s each, two at a time"
  local start=$SECONDS t name
  fuzz_one() {
    local name=${1#fuzz_} new=build-fuzz/corpus-new/${1#fuzz_}
    mkdir -p "$new"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      "build-fuzz/bin/$1" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$out/$name-" "$new" "tests/fuzz/corpus/$name" >"$out/$name.log" 2>&1
  }
  local -A pid_of=()
  for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || true; done
    fuzz_one "$t" &
    pid_of[$t]=$!
  done
  local failed=0 runs
  for t in "${targets[@]}"; do
    name=${t#fuzz_}
    if wait "${pid_of[$t]}"; then
      runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$name.log")
      echo "test: fuzz $name: ${runs:-?} runs, $(find "build-fuzz/corpus-new/$name" -type f | wc -l) inputs in build-fuzz/corpus-new/$name"
    else
      failed=1
      echo "test: FUZZ $name FAILED (crash input: $(ls "$out/$name"-* 2>/dev/null | head -1)); log $out/$name.log:"
      grep -E 'ERROR|SUMMARY|runtime error|terminate|what\(\)' "$out/$name.log" | head -10
    fi
  done
  echo "test: fuzzing took $((SECONDS - start)) s. To keep new inputs that add coverage in the seed corpus:"
  echo "  build-fuzz/bin/fuzz_<target> -merge=1 tests/fuzz/corpus/<target> build-fuzz/corpus-new/<target>"
  echo "  (a crash input goes to tests/fuzz/corpus/<target>/found-<what> with its fix, so the replay keeps it)"
  return "$failed"
}
if [ -z "${KEYLINE_SKIP_FUZZ:-}" ] && [ $# -eq 0 ]; then
  run_fuzz || status=1
fi

echo "test: main build, unit + integration + e2e"
ctest --test-dir build -j"$jobs" --output-on-failure --timeout 900 "$@" || status=1
exit $status
