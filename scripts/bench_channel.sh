#!/usr/bin/env bash
# The cost of the chip-bound channel (issue #15), called by scripts/bench.sh channel.
#
#   scripts/bench_channel.sh [BUILD_DIR]      (default build/; a Release build is what the figures mean)
#
# One line (scripts/lib/line.sh), two fleets served side by side: chips without a vendor identity (they
# take --channel plain) and chips with one (LINE_CHANNEL=scp11a: vendor-init, make --vendor). Over fresh
# devices each, in the same run, `keyline-station run --fleet` with KEYLINE_BENCH_CHANNEL_J (16) at once:
#   generate+plain        the reference (extended APDUs: one STORE DATA for the package)
#   generate+plain-short  --short-apdus: the round trips of short APDUs without the channel's crypto,
#                         so the gap to scp11a splits into "short APDUs" and "the channel itself"
#   generate+scp11a       vendor check, SCP11a handshake, secure messaging (short APDUs, docs/channel.md)
#   device+scp11a         the same with GENERATE KEY and attestation (--key-source device)
# Each configuration runs KEYLINE_BENCH_CHANNEL_ROUNDS (2) times over KEYLINE_BENCH_CHANNEL_DEVICES (150)
# devices, in the order 1 2 3 4 then 4 3 2 1 (a warm line is faster; each side gets an early and a late
# run). Prints devices/s (wall time of the station from start to exit), the CPU ms per device of the
# station (user + system, /usr/bin/time) and of the device emulator serving that fleet (/proc/PID/stat
# ticks around the run), and each figure's ratio to generate+plain. Goal: scp11a costs at most 15% of
# the plain figure (docs/channel.md, "Cost", has the measured figures and what they mean).
#
# Environment: KEYLINE_BENCH_CHANNEL_DEVICES, KEYLINE_BENCH_CHANNEL_ROUNDS, KEYLINE_BENCH_CHANNEL_J,
# KEYLINE_BENCH_DIR (default .keyline/bench/channel), KEYLINE_BENCH_CHANNEL_CONFIGS (a subset of
# "plain plain-short scp11a device").
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build}
export LINE_BIN=$build/bin
for b in keyline-station keyline-device keyline-backupdb; do
  [ -x "$LINE_BIN/$b" ] || { echo "bench_channel: $LINE_BIN/$b not built" >&2; exit 2; }
done
[ -x /usr/bin/time ] || { echo "bench_channel: /usr/bin/time missing (Debian package time)" >&2; exit 2; }
n=${KEYLINE_BENCH_CHANNEL_DEVICES:-150}
rounds=${KEYLINE_BENCH_CHANNEL_ROUNDS:-2}
j=${KEYLINE_BENCH_CHANNEL_J:-16}
dir=${KEYLINE_BENCH_DIR:-$repo/.keyline/bench/channel}
read -r -a configs <<<"${KEYLINE_BENCH_CHANNEL_CONFIGS:-plain plain-short scp11a device}"
mkdir -p "$dir"
# shellcheck source=lib/line.sh
source "$repo/scripts/lib/line.sh"
trap line_down EXIT

# Devices per fleet: every run of a configuration on that fleet takes fresh devices.
plain_runs=0 vendor_runs=0
for c in "${configs[@]}"; do
  case "$c" in plain | plain-short) plain_runs=$((plain_runs + rounds)) ;; scp11a | device) vendor_runs=$((vendor_runs + rounds)) ;;
    *) echo "bench_channel: unknown configuration $c" >&2; exit 2 ;; esac
done
rm -rf "$dir/line"
sync
LINE_CHANNEL=scp11a LINE_DEVICE_FLAGS="--quiet" line_up "$dir/line" $((n * (vendor_runs > 0 ? vendor_runs : 1))) \
  >/dev/null 2>"$dir/line-up.log" || { cat "$dir/line-up.log" >&2; exit 1; }
line_fleet_file "$LINE_DIR/fleet-vendor.txt"
vendor_pid=${LINE_PIDS[-1]}
# The plain fleet: chips made without --vendor, served by a second emulator process on the same line.
plain_pid=
if [ "$plain_runs" -gt 0 ]; then
  "$LINE_BIN/keyline-device" make --dir "$LINE_DIR/fleet-plain" --count $((n * plain_runs)) --rom-ca "$LINE_DIR/pki/root.pem" \
    >"$LINE_DIR/logs/make-plain.log" 2>&1
  # line_up topped up the IMEI pool for the vendor fleet only.
  "$LINE_BIN/keyline-station" pool generate --tac 35780503 --count $((n * plain_runs)) >"$LINE_DIR/logs/pool-plain.log"
  "$LINE_BIN/keyline-device" serve --fleet "$LINE_DIR/fleet-plain" --listen 127.0.0.1:0 --quiet \
    >"$LINE_DIR/logs/fleet-plain.out" 2>"$LINE_DIR/logs/fleet-plain.log" &
  plain_pid=$!
  LINE_PIDS+=("$plain_pid")
  for ((i = 0; i < 200; i++)); do
    [ "$(grep -c '^listening' "$LINE_DIR/logs/fleet-plain.out")" -ge $((n * plain_runs)) ] && break
    sleep 0.1
  done
  grep '^listening' "$LINE_DIR/logs/fleet-plain.out" >"$LINE_DIR/fleet-plain.txt"
  [ "$(wc -l <"$LINE_DIR/fleet-plain.txt")" -eq $((n * plain_runs)) ] ||
    { echo "bench_channel: the plain fleet did not start" >&2; cat "$LINE_DIR/logs/fleet-plain.log" >&2; exit 1; }
fi
sync

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -A wall cpu dev_ticks next_slice
next_slice[plain]=0 next_slice[vendor]=0
for c in "${configs[@]}"; do wall[$c]=0 cpu[$c]=0 dev_ticks[$c]=0; done

# run_config NAME: one station run over the next N fresh devices of the fleet NAME takes.
run_config() {
  local c=$1 fleet pid args=() k d0 d1 rate
  case "$c" in
    plain) fleet=plain args=(--channel plain --key-source generate) ;;
    plain-short) fleet=plain args=(--channel plain --key-source generate --short-apdus) ;;
    scp11a) fleet=vendor args=(--channel scp11a --key-source generate) ;;
    device) fleet=vendor args=(--channel scp11a --key-source device) ;;
  esac
  [ "$fleet" = plain ] && pid=$plain_pid || pid=$vendor_pid
  k=${next_slice[$fleet]}
  next_slice[$fleet]=$((k + 1))
  sed -n "$((k * n + 1)),$(((k + 1) * n))p" "$LINE_DIR/fleet-$fleet.txt" >"$LINE_DIR/run-$c-$k.fleet"
  d0=$(ticks "$pid")
  /usr/bin/time -f '%U %S' -o "$LINE_DIR/run-$c-$k.time" "$LINE_BIN/keyline-station" "${args[@]}" run \
    --fleet "$LINE_DIR/run-$c-$k.fleet" -j "$j" --progress plain >"$LINE_DIR/run-$c-$k.log" 2>&1 || { cat "$LINE_DIR/run-$c-$k.log" >&2; exit 1; }
  d1=$(ticks "$pid")
  grep -Eq "^\| done \(published\) +\| +$n \|" "$LINE_DIR/run-$c-$k.log" ||
    { echo "bench_channel: $c run $k did not publish $n devices" >&2; tail -20 "$LINE_DIR/run-$c-$k.log" >&2; exit 1; }
  # The station's own figure (its "devices/s" row: first device to last publication) leaves out its
  # start (token login, keys and certificates loaded), the same for every configuration.
  rate=$(sed -n 's/^| devices\/s *| *\([0-9.]*\) |$/\1/p' "$LINE_DIR/run-$c-$k.log")
  wall[$c]=$(awk -v a="${wall[$c]}" -v n="$n" -v r="$rate" 'BEGIN { print a + n / r }')
  cpu[$c]=$(awk -v a="${cpu[$c]}" '{ print a + $1 + $2 }' "$LINE_DIR/run-$c-$k.time")
  dev_ticks[$c]=$((dev_ticks[$c] + d1 - d0))
}

order=()
for ((r = 0; r < rounds; r++)); do
  if ((r % 2 == 0)); then order+=("${configs[@]}"); else for ((i = ${#configs[@]} - 1; i >= 0; i--)); do order+=("${configs[$i]}"); done; fi
done
for c in "${order[@]}"; do run_config "$c"; done
line_down

ref=${configs[0]}
echo "the channel's cost ($n devices per run, $rounds runs each, $j at once, delays off, same line, same run):"
for c in "${configs[@]}"; do
  awk -v name="$c" -v m=$((n * rounds)) -v w="${wall[$c]}" -v s="${cpu[$c]}" -v d="${dev_ticks[$c]}" -v hz="$hz" \
    -v rw="${wall[$ref]}" -v rs="${cpu[$ref]}" -v rd="${dev_ticks[$ref]}" 'BEGIN {
      label = name == "plain" ? "generate+plain" : name == "plain-short" ? "generate+plain --short-apdus" : name == "scp11a" ? "generate+scp11a" : "device+scp11a"
      printf "  %-30s %7.1f devices/s (%.3f), station CPU %5.2f ms/device (%.2f), device CPU %5.2f ms/device (%.2f)\n",
        label, m / w, rw / w, s * 1000 / m, s / rs, d * 1000 / hz / m, (rd > 0 ? d / rd : 0) }'
done
echo "  (ratios in brackets: to ${ref}; goal: generate+scp11a devices/s >= 0.85)"
