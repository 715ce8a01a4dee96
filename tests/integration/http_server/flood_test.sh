#!/bin/sh
# The acceptance run of issue 12: tests/support/flood.py against http_server_flood_target (TLS,
# the default ServerLimits) with 200 slow-header, 200 silent and 200 slow-handshake connections for
# 20 s; every probe answered, p99 under 100 ms. Prints the server's CPU time over the run (/proc).
# Usage: flood_test.sh <http_server_flood_target> <flood.py> [seconds] [poco]
# ("poco" serves with Poco's thread-per-connection HTTPServer instead, to show the run failing there.)
# SOURCES=127.0.0.10 puts every hostile connection on one address (the per-client cap refuses most).
set -eu
target=$1
flood=$2
seconds=${3:-20}
mode=${4:-}
dir=$(mktemp -d /tmp/kl-flood.XXXXXX)
mkfifo "$dir/in"
"$target" $mode <"$dir/in" >"$dir/out" 2>"$dir/err" &
pid=$!
exec 3>"$dir/in"  # the target serves until this closes
cleanup() { exec 3>&-; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
i=0
until grep -q '^port ' "$dir/out"; do
  i=$((i + 1))
  if [ $i -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then echo "target did not start"; cat "$dir/err"; exit 1; fi
  sleep 0.1
done
port=$(awk '/^port /{print $2}' "$dir/out")
ca=$(awk '/^port /{print $4}' "$dir/out")
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
rc=0
python3 "$flood" --target "127.0.0.1:$port" --tls --slow-header 200 --silent 200 --slow-handshake 200 \
  --seconds "$seconds" --sources "${SOURCES:-127.0.0.10-127.0.0.40}" --probe "https://127.0.0.1:$port/record" \
  --probe-ca "$ca" --probe-every 0.2 --p99-max-ms 100 --probe-source 127.0.0.2 || rc=$?
after=$(ticks)
awk -v b="$before" -v a="$after" -v hz="$hz" -v s="$seconds" \
  'BEGIN { printf "server CPU %.2f s over the %d s run (%.1f%% of one core)\n", (a - b) / hz, s, 100 * (a - b) / hz / s }'
exec 3>&-
wait "$pid" || true
cat "$dir/out" | grep '^stats' || true
exit $rc
