#!/usr/bin/env bash
# The benchmarks. Each prints its figure next to a reference measured in the same run, and the ratio:
# absolute numbers depend on the machine, ratios much less.
#   scripts/bench.sh            all
#   scripts/bench.sh backupdb   public DB reads vs nginx serving the same bodies, warm and cold (no cache,
#                               batched and not), HTTP and HTTPS, 1 and 2 read nodes (issues 4 and 20)
#   scripts/bench.sh tlog       the public DB's transparency log: publish with the log vs --no-log, proof
#                               p99 at 1M leaves, tile reads vs nginx (issue 18, scripts/bench_tlog.sh)
#   scripts/bench.sh line       devices/s end to end vs the crypto floor; concurrency sweep (issue 7)
#   scripts/bench.sh pcsc       devices/s and station CPU per device through 16 PC/SC readers next to
#                               TCP, same line, same run (issue 13; part 3 of scripts/bench_line.sh)
#   scripts/bench.sh service    device service sessions/s with 32 agents, one item push each, p50/p99,
#                               against a session's three bare HTTPS round trips (issue 16, bench_service.sh)
#   scripts/bench.sh channel    the chip-bound channel's cost: devices/s and CPU per device (station, device)
#                               for generate+plain, generate+scp11a, device+scp11a, ratios to plain
#                               (issue 15, scripts/bench_channel.sh)
#   scripts/bench.sh kps        KPS transfers/s with 32 device agents (daemons), notification latency
#                               p50/p99, against the crypto floor of one transfer (issue 17, bench_kps.sh)
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
# wrk and nginx serve only the benchmarks, so setup.sh installs them for this caller alone.
KEYLINE_EXTRA_PACKAGES="wrk nginx" "$top/scripts/setup.sh" >/dev/null
mkdir -p "$top/.keyline/bench"
which=${1:-all}
rc=0
if [ "$which" = all ] || [ "$which" = backupdb ]; then
  if [ -x scripts/bench_backupdb.sh ]; then scripts/bench_backupdb.sh || rc=1; else echo "bench: backupdb benchmark missing"; rc=1; fi
fi
if [ "$which" = all ] || [ "$which" = tlog ]; then
  if [ -x scripts/bench_tlog.sh ]; then scripts/bench_tlog.sh || rc=1; else echo "bench: tlog benchmark missing"; rc=1; fi
fi
if [ "$which" = all ] || [ "$which" = service ]; then
  if [ -x scripts/bench_service.sh ]; then scripts/bench_service.sh || rc=1; else echo "bench: service benchmark missing"; rc=1; fi
fi
if [ "$which" = all ] || [ "$which" = channel ]; then
  if [ -x scripts/bench_channel.sh ]; then scripts/bench_channel.sh || rc=1
  else echo "bench: channel benchmark missing"; rc=1; fi
fi
if [ "$which" = all ] || [ "$which" = kps ]; then
  if [ -x scripts/bench_kps.sh ]; then scripts/bench_kps.sh || rc=1; else echo "bench: kps benchmark missing"; rc=1; fi
fi
line_parts=""
case "$which" in
  all) line_parts="1 2 3" ;;
  line) line_parts="1 2" ;;
  pcsc) line_parts="3" ;;
esac
if [ -n "$line_parts" ]; then
  if [ -x scripts/bench_line.sh ]; then KEYLINE_BENCH_LINE_PARTS="$line_parts" scripts/bench_line.sh || rc=1
  else echo "bench: line benchmark missing"; rc=1; fi
fi
exit $rc
