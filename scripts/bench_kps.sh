#!/usr/bin/env bash
# Benchmark of keyline-kps v2 with its device agents (issue #17), called by scripts/bench.sh (part "kps").
#
#   scripts/bench_kps.sh [BUILD_DIR]
#
# A whole line (scripts/lib/line.sh) with KEYLINE_BENCH_KPS_DEVICES (32) personalized devices, each
# running `keyline-device kps agent` (daemon, long poll 30 s), a KPS signing every answer on the line's
# SoftHSM token. An owner account asks, in KEYLINE_BENCH_KPS_ROUNDS (2) rounds, every device I to give
# its key bench-I-R to every other device (group transfers, 31 targets each): devices x (devices - 1) x
# rounds transfers, each sealed, signed, delivered, verified, stored and acknowledged on its own.
# Prints completed transfers/s (first request to last acknowledgement), the notification latency p50/p99
# (the source's upload to the target's agent holding the key-delivered notice), the CPU seconds per
# transfer of the KPS, the agents and PostgreSQL, and as the reference the crypto floor of one transfer
# measured in the same run (bench_kps_floor: the ~60 public-key operations of a transfer back to back on
# one core, no network, no database), with the ratio.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build}
export LINE_BIN=$build/bin
devices=${KEYLINE_BENCH_KPS_DEVICES:-32}
rounds=${KEYLINE_BENCH_KPS_ROUNDS:-2}
dir=${KEYLINE_BENCH_KPS_DIR:-$repo/.keyline/bench/kps}
for p in keyline-kps keyline-device keyline-station keyline-backupdb bench_kps_floor; do
  [ -x "$LINE_BIN/$p" ] || { echo "bench_kps: $LINE_BIN/$p not built" >&2; exit 2; }
done
# shellcheck source=lib/line.sh
source "$repo/scripts/lib/line.sh"
# shellcheck source=../tests/e2e/kps/kps_lib.sh
source "$repo/tests/e2e/kps/kps_lib.sh"
agent_pids=()
cleanup() {
  local p
  for p in "${agent_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  line_down
}
trap cleanup EXIT
rm -rf "$dir"
mkdir -p "$dir"
ncpu=$(nproc)

echo "bench_kps: reference: the crypto floor of one transfer (one core)"
floor=$("$LINE_BIN/bench_kps_floor" 3)
echo "$floor" | sed 's/^/  /'
floor_ms=$(echo "$floor" | awk '$1 == "floor_ms_per_transfer" {print $2}')

line_up "$dir/line" "$devices" >"$dir/line.log" 2>&1
line_personalize >"$dir/personalize.json" 2>>"$dir/line.log"
echo "allow * * bench-*" >"$dir/policy.txt"
kps_init "$dir/policy.txt" 2>>"$dir/line.log"
# Every agent holds a long poll: enough workers and waiters for all of them plus the work.
KPS_LOG=off kps_start --threads $((devices + 16)) --max-waiters $((devices + 4)) --db-pool 16
chips=()
for ((i = 0; i < devices; i++)); do
  d=${LINE_DEVICE_DIRS[$i]}
  chips+=("$("$LINE_BIN/keyline-device" status --dir "$d" | awk '$1 == "chip_id" {print $2}')")
  for ((r = 0; r < rounds; r++)); do "$LINE_BIN/keyline-device" key-new --dir "$d" --label "bench-$i-$r" >/dev/null; done
  "$LINE_BIN/keyline-device" kps policy add --dir "$d" --target '*' --label 'bench-*' >/dev/null
done
owner_args=()
for c in "${chips[@]}"; do owner_args+=(--device "$c"); done
token=$(KEYLINE_KPS_DB="$KPS_DB" "$LINE_BIN/keyline-kps" account add --name bench "${owner_args[@]}")
for ((i = 0; i < devices; i++)); do
  ( kps_agent_exec agent "$i" --wait 30 --max-backoff-ms 2000 >"$dir/agent-$i.out" 2>"$dir/agent-$i.err" ) &
  agent_pids+=($!)
done
sleep 2  # every agent in its first long poll

cpu_of() {  # PID...: utime+stime+cutime+cstime in clock ticks, summed
  local p t=0 v
  for p in "$@"; do
    v=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + v))
  done
  echo "$t"
}
pg_pids() { local pm; pm=$(head -1 "$LINE_DIR/pg/data/postmaster.pid"); echo "$pm" $(pgrep -P "$pm"); }
total=$((devices * (devices - 1) * rounds))
kps_cpu0=$(cpu_of "$KPS_PID"); agents_cpu0=$(cpu_of "${agent_pids[@]}"); pg_cpu0=$(cpu_of $(pg_pids))
t0=$(date +%s.%N)
python3 - "$KPS_URL" "$KPS_CA" "$token" "$rounds" "${chips[@]}" <<'PY'
import http.client, json, ssl, sys, threading
url, ca, token, rounds, chips = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
host, port = url[len("https://"):].rsplit(":", 1)
jobs = [(r, i, s) for r in range(rounds) for i, s in enumerate(chips)]
lock = threading.Lock()
def worker():
    c = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=ca))
    while True:
        with lock:
            if not jobs: return
            r, i, s = jobs.pop(0)
        body = json.dumps({"source": s, "label": "bench-%d-%d" % (i, r), "targets": [t for t in chips if t != s]})
        c.request("POST", "/v1/transfers", body=body,
                  headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        a = c.getresponse(); a.read()
        if a.status != 201: print("bench_kps: group request ->", a.status, file=sys.stderr)
ts = [threading.Thread(target=worker) for _ in range(4)]
for t in ts: t.start()
for t in ts: t.join()
PY
t_req=$(date +%s.%N)
done_n=0
for ((i = 0; i < ${KEYLINE_BENCH_KPS_TIMEOUT_S:-600} * 10; i++)); do
  done_n=$(kps_sql "SELECT count(*) FROM transfers WHERE state = 'acknowledged'")
  [ "$done_n" -ge "$total" ] && break
  sleep 0.1
done
t1=$(date +%s.%N)
kps_cpu=$(( $(cpu_of "$KPS_PID") - kps_cpu0 )); agents_cpu=$(( $(cpu_of "${agent_pids[@]}") - agents_cpu0 ))
pg_cpu=$(( $(cpu_of $(pg_pids)) - pg_cpu0 ))
for p in "${agent_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${agent_pids[@]}"; do wait "$p" 2>/dev/null || true; done
agent_pids=()

python3 - "$dir" "$devices" "$total" "$done_n" "$t0" "$t_req" "$t1" "$kps_cpu" "$agents_cpu" "$pg_cpu" \
  "$(getconf CLK_TCK)" "$floor_ms" "$ncpu" <<'PY'
import glob, re, sys
d, devices, total, done, t0, t_req, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
kps_cpu, agents_cpu, pg_cpu, tck, floor_ms, ncpu = int(sys.argv[8]), int(sys.argv[9]), int(sys.argv[10]), \
    int(sys.argv[11]), float(sys.argv[12]), int(sys.argv[13])
delivered, seen = {}, {}
for f in glob.glob(d + "/agent-*.out"):
    for line in open(f):
        m = re.match(r"agent: delivered (\S+) t=(\d+)", line)
        if m: delivered[m.group(1)] = int(m.group(2))
        m = re.match(r"notice key-delivered (\S+) t=(\d+)", line)
        if m: seen.setdefault(m.group(1), int(m.group(2)))
lat = sorted(seen[i] - delivered[i] for i in seen if i in delivered)
def pct(p): return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
wall = t1 - t0
rate = done / wall
floor_rate = ncpu * 1000.0 / floor_ms
print("bench_kps: %d agents (daemons), %d of %d transfers acknowledged in %.2f s (requests issued in %.2f s)"
      % (devices, done, total, wall, t_req - t0))
print("  completed transfers/s        %8.1f" % rate)
print("  crypto floor transfers/s     %8.1f   (%d cores x 1000 / %.2f ms: the reference)" % (floor_rate, ncpu, floor_ms))
print("  ratio measured / floor       %8.2f" % (rate / floor_rate))
print("  notification latency p50/p99 %6d / %d ms  (%d samples: upload by the source -> notice at the target's agent)"
      % (pct(0.5), pct(0.99), len(lat)))
per = lambda ticks: 1000.0 * ticks / tck / max(done, 1)
print("  CPU ms per transfer: KPS %.2f, agents %.2f, PostgreSQL %.2f; total %.2f of %.2f available (%d cores x wall / transfers)"
      % (per(kps_cpu), per(agents_cpu), per(pg_cpu), per(kps_cpu + agents_cpu + pg_cpu), 1000.0 * ncpu * wall / max(done, 1), ncpu))
print("  goal 1000 transfers/s: %s" % ("met" if rate >= 1000 else "not met on this machine (see the floor and the CPU split)"))
PY
