#!/usr/bin/env bash
# Benchmark of the line at scale (issue #7), called by scripts/bench.sh.
#
#   scripts/bench_line.sh [BUILD_DIR]      (default build/; a Release build is what the figures mean)
#
# 1. End to end, device delays off: `keyline-station run` with 64 devices at once over a fleet of
#    emulated devices, PostgreSQL with fsync and synchronous_commit on (scripts/pg.sh), the Device CA
#    key on the SoftHSM token, publication to keyline-backupdb over mutual TLS. Reference, measured in
#    the same run on the same token: `keyline-station bench-floor`, one process doing per device only
#    the cryptography (P-256 and X25519 key generation, the two certificate signatures on the token,
#    the data package and the device's AES-GCM sealing) on as many threads as there are cores.
#    Prints both devices/s and the ratio. Goal (2-core machine): >= 500 devices/s, ratio >= 0.4.
# 2. Realistic device delays (keyline-device --delays realistic: 10 ms chip ID, 50 ms per STORE DATA
#    block, 300 ms flash write): devices/s at 16, 64 and 256 devices at once, and the station's peak
#    RSS at 256 (goal <= 150 MB).
#
# Measured on the 2-core machine (Release build, quiet machine), 2026-11-23, after the station moved to
# one extended APDU per package:
#   end to end 112.7 devices/s, crypto floor 1318 devices/s, ratio 0.085 (goals 500/s and 0.4 not met);
#   delays on: 36.9 / 81.9 / 95.2 devices/s at 16 / 64 / 256 at once, peak RSS 28 / 34 / 58 MB.
#   (An earlier run, short APDUs, other work alongside: 142 devices/s, floor 1849, 20 / 63 / 122 with delays.)
#   Where the time goes (perf, top): the machine is CPU-bound; per device ~19 ms of CPU over all
#   processes against ~1 ms of cryptography: PostgreSQL (~10 commits with fsync and ~20 statements
#   per device in personalize.cpp: 4 audit autocommits, claim, issued, stored, record, publish), the
#   station (libpq, APDU syscalls, malloc), the public DB's validation, and the device emulator.
#   Batching journal writes across devices (group commit) is the next step; see docs/line.md.
#
# Environment: KEYLINE_BENCH_LINE_DEVICES (devices of part 1, default 2000), KEYLINE_BENCH_DIR
# (default .keyline/bench/line), KEYLINE_BENCH_LINE_SWEEP ("16 64 256").
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build}
export LINE_BIN=$build/bin
for b in keyline-station keyline-device keyline-backupdb; do
  [ -x "$LINE_BIN/$b" ] || { echo "bench_line: $LINE_BIN/$b not built" >&2; exit 2; }
done
[ -x /usr/bin/time ] || { echo "bench_line: /usr/bin/time missing (Debian package time)" >&2; exit 2; }
n=${KEYLINE_BENCH_LINE_DEVICES:-2000}
dir=${KEYLINE_BENCH_DIR:-$repo/.keyline/bench/line}
sweep=${KEYLINE_BENCH_LINE_SWEEP:-16 64 256}
cores=$(nproc)
# shellcheck source=lib/line.sh
source "$repo/scripts/lib/line.sh"
trap line_down EXIT

rate_of() { sed -n 's/^| devices\/s *| *\([0-9.]*\) |$/\1/p' "$1"; }

# --- 1. end to end vs the crypto floor ------------------------------------------------------------
rm -rf "$dir/e2e"
LINE_DEVICE_FLAGS="--quiet" line_up "$dir/e2e" "$n" >/dev/null 2>"$dir.e2e.log" || { cat "$dir.e2e.log" >&2; exit 1; }
line_fleet_file "$LINE_DIR/fleet.txt"
floor=$("$LINE_BIN/keyline-station" bench-floor --devices "$n" --threads "$cores" | awk '{print $2}')
"$LINE_BIN/keyline-station" run --fleet "$LINE_DIR/fleet.txt" -j 64 --progress plain >"$LINE_DIR/run.log" 2>&1 ||
  { cat "$LINE_DIR/run.log" >&2; exit 1; }
line_rate=$(rate_of "$LINE_DIR/run.log")
ratio=$(awk -v a="$line_rate" -v b="$floor" 'BEGIN { printf "%.3f", a / b }')
line_down
echo "line end to end ($n devices, 64 at once, delays off, fsync on, SoftHSM signing, mutual-TLS publish):"
printf '  station      %8.1f devices/s\n' "$line_rate"
printf '  crypto floor %8.1f devices/s (one process, %d threads, same token, same run)\n' "$floor" "$cores"
printf '  ratio        %8s          goal >= 0.4; goal >= 500 devices/s\n' "$ratio"

# --- 2. realistic delays: throughput against concurrency, RSS -------------------------------------
total=0
for j in $sweep; do total=$((total + (j * 4 > 200 ? j * 4 : 200))); done
rm -rf "$dir/delays"
LINE_DEVICE_FLAGS="--delays realistic --quiet" line_up "$dir/delays" "$total" >/dev/null 2>"$dir.delays.log" ||
  { cat "$dir.delays.log" >&2; exit 1; }
line_fleet_file "$LINE_DIR/fleet.txt"
echo "realistic device delays (10/50/300 ms):"
from=1
for j in $sweep; do
  k=$((j * 4 > 200 ? j * 4 : 200))
  sed -n "${from},$((from + k - 1))p" "$LINE_DIR/fleet.txt" >"$LINE_DIR/fleet-$j.txt"
  from=$((from + k))
  /usr/bin/time -f '%M' -o "$LINE_DIR/rss-$j" "$LINE_BIN/keyline-station" run --fleet "$LINE_DIR/fleet-$j.txt" -j "$j" \
    --progress plain >"$LINE_DIR/run-$j.log" 2>&1 || { cat "$LINE_DIR/run-$j.log" >&2; exit 1; }
  printf '  %4d at once: %7.1f devices/s over %d devices, station peak RSS %d MB\n' "$j" \
    "$(rate_of "$LINE_DIR/run-$j.log")" "$k" "$(( $(tail -1 "$LINE_DIR/rss-$j") / 1024 ))"
done
echo "  goal: throughput grows with concurrency up to 256; peak RSS <= 150 MB"
