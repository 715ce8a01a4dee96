#!/usr/bin/env bash
# The benchmarks. Each prints its figure next to a reference measured in the same run, and the ratio:
# absolute numbers depend on the machine, ratios much less.
#   scripts/bench.sh            all
#   scripts/bench.sh backupdb   public DB reads vs nginx serving the same bodies (issue 4)
#   scripts/bench.sh line       devices/s end to end vs the crypto floor; concurrency sweep (issue 7)
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
if [ "$which" = all ] || [ "$which" = line ]; then
  if [ -x scripts/bench_line.sh ]; then scripts/bench_line.sh || rc=1; else echo "bench: line benchmark missing"; rc=1; fi
fi
exit $rc
