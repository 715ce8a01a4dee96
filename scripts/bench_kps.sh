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
# Three phases: (1) the owner's requests (E1, with the agents stopped: each target's transport
# certificate is fetched from the public DB), transfers created/s; (2) the 32 agents started on that
# backlog: completed transfers/s (agents start to last acknowledgement) and the CPU ms per transfer of
# the KPS, the agents and PostgreSQL; (3) KEYLINE_BENCH_KPS_SAMPLES (20) single transfers one after the
# other with every agent idle in its long poll: notification latency p50/p99, from the source's agent
# holding the transfer-requested notice to the target's agent holding the key-delivered notice (so it
# holds the source's work — GET, seal, sign, upload — the KPS's checks and one notice hop), and the
# whole transfer, the owner's request to the acknowledgement. The reference, measured in the same run, is the
# crypto floor of one transfer (bench_kps_floor: the ~60 public-key operations of a transfer back to back
# on one core, no network, no database); the ratio is printed.
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
samples=${KEYLINE_BENCH_KPS_SAMPLES:-20}

cpu_of() {  # PID...: utime+stime+cutime+cstime in clock ticks, summed
  local p t=0 v
  for p in "$@"; do
    v=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + v))
  done
  echo "$t"
}
pg_pids() { local pm; pm=$(head -1 "$LINE_DIR/pg/data/postmaster.pid"); echo "$pm" $(pgrep -P "$pm"); }
wait_acked() {  # COUNT: until that many transfers are acknowledged (or the timeout)
  local i n=0
  for ((i = 0; i < ${KEYLINE_BENCH_KPS_TIMEOUT_S:-600} * 20; i++)); do
    n=$(kps_sql "SELECT count(*) FROM transfers WHERE state = 'acknowledged'")
    [ "$n" -ge "$1" ] && break
    sleep 0.05
  done
  echo "$n"
}
# group_requests ROUND_FROM ROUNDS TARGETS_PER_SOURCE: the owner's group requests, 4 connections.
group_requests() {
  python3 - "$KPS_URL" "$KPS_CA" "$token" "$1" "$2" "$3" "${chips[@]}" <<'PY'
import http.client, json, ssl, sys, threading
url, ca, token, r0, rounds, per, chips = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), \
    int(sys.argv[6]), sys.argv[7:]
host, port = url[len("https://"):].rsplit(":", 1)
jobs = [(r, i, s) for r in range(r0, r0 + rounds) for i, s in enumerate(chips)]
lock = threading.Lock()
def worker():
    c = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=ca))
    while True:
        with lock:
            if not jobs: return
            r, i, s = jobs.pop(0)
        targets = [chips[(i + k) % len(chips)] for k in range(1, per + 1)]
        body = json.dumps({"source": s, "label": "bench-%d-%d" % (i, r), "targets": targets})
        c.request("POST", "/v1/transfers", body=body,
                  headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        a = c.getresponse(); a.read()
        if a.status != 201: print("bench_kps: group request ->", a.status, file=sys.stderr)
ts = [threading.Thread(target=worker) for _ in range(4)]
for t in ts: t.start()
for t in ts: t.join()
PY
}

# (1) requests, agents stopped
total=$((devices * (devices - 1) * rounds))
t0=$(date +%s.%N)
group_requests 0 "$rounds" $((devices - 1))
t_req=$(date +%s.%N)
# (2) the agents on the backlog
kps_cpu0=$(cpu_of "$KPS_PID"); pg_cpu0=$(cpu_of $(pg_pids))
t_start=$(date +%s.%N)
for ((i = 0; i < devices; i++)); do
  ( kps_agent_exec agent "$i" --wait 30 --max-backoff-ms 2000 >"$dir/agent-$i.out" 2>"$dir/agent-$i.err" ) &
  agent_pids+=($!)
done
done_n=$(wait_acked "$total")
t1=$(date +%s.%N)
kps_cpu=$(( $(cpu_of "$KPS_PID") - kps_cpu0 )); agents_cpu=$(cpu_of "${agent_pids[@]}")
pg_cpu=$(( $(cpu_of $(pg_pids)) - pg_cpu0 ))
sleep 2  # the key-acknowledged notices handled: every agent idle in its long poll
: >"$dir/phase3.mark"
# (3) single transfers, one after the other, each to the next device, a round of its own
for ((k = 0; k < samples; k++)); do
  ts=$(date +%s%N)
  python3 - "$KPS_URL" "$KPS_CA" "$token" "${chips[$((k % devices))]}" "${chips[$(((k + 1) % devices))]}" \
    "bench-$((k % devices))-0" <<'PY'
import http.client, json, ssl, sys
url, ca, token, s, t, label = sys.argv[1:7]
host, port = url[len("https://"):].rsplit(":", 1)
c = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=ca))
c.request("POST", "/v1/transfers", body=json.dumps({"source": s, "label": label, "targets": [t]}),
          headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
print(json.loads(c.getresponse().read())["transfers"][0]["id"])
PY
  wait_acked $((total + k + 1)) >/dev/null
  echo "$(( ($(date +%s%N) - ts) / 1000000 ))" >>"$dir/phase3.ms"
done >"$dir/phase3.ids"
for p in "${agent_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${agent_pids[@]}"; do wait "$p" 2>/dev/null || true; done
agent_pids=()

python3 - "$dir" "$devices" "$total" "$done_n" "$t0" "$t_req" "$t_start" "$t1" "$kps_cpu" "$agents_cpu" "$pg_cpu" \
  "$(getconf CLK_TCK)" "$floor_ms" "$ncpu" <<'PY'
import glob, re, sys
d, devices, total, done = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t0, t_req, t_start, t1 = (float(x) for x in sys.argv[5:9])
kps_cpu, agents_cpu, pg_cpu, tck = (int(x) for x in sys.argv[9:13])
floor_ms, ncpu = float(sys.argv[13]), int(sys.argv[14])
delivered, seen = {}, {}  # the source's agent told of the request, the target's agent told of the key
for f in glob.glob(d + "/agent-*.out"):
    for line in open(f):
        m = re.match(r"notice transfer-requested (\S+) t=(\d+)", line)
        if m: delivered.setdefault(m.group(1), int(m.group(2)))
        m = re.match(r"notice key-delivered (\S+) t=(\d+)", line)
        if m: seen.setdefault(m.group(1), int(m.group(2)))
def pcts(ids):
    lat = sorted(seen[i] - delivered[i] for i in ids if i in seen and i in delivered)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else -1
    return p(0.5), p(0.99), len(lat)
idle = [l.strip() for l in open(d + "/phase3.ids") if l.strip()]
bulk = [i for i in seen if i not in set(idle)]
wall = t1 - t_start
rate = done / wall
floor_rate = ncpu * 1000.0 / floor_ms
per = lambda ticks: 1000.0 * ticks / tck / max(done, 1)
print("bench_kps: %d agents (daemons); %d transfers (%d x %d targets x %d rounds)" % (devices, total, devices, devices - 1, total // (devices * (devices - 1))))
print("  (1) E1 requests by the owner       %8.1f transfers created/s (%.1f s; the KPS fetches each target's record)" % (total / (t_req - t0), t_req - t0))
print("  (2) completed transfers/s          %8.1f (%d acknowledged in %.1f s after the agents started)" % (rate, done, wall))
print("      crypto floor transfers/s       %8.1f (reference: %d cores x 1000 / %.2f ms per transfer)" % (floor_rate, ncpu, floor_ms))
print("      ratio measured / floor         %8.2f" % (rate / floor_rate))
print("      CPU ms per transfer            KPS %.2f, agents %.2f, PostgreSQL %.2f = %.2f; %.2f was available (%d cores x wall / transfers)"
      % (per(kps_cpu), per(agents_cpu), per(pg_cpu), per(kps_cpu + agents_cpu + pg_cpu), 1000.0 * ncpu * wall / max(done, 1), ncpu))
print("      notice latency under backlog   p50 %d ms, p99 %d ms (%d samples; includes each agent's own queue)" % pcts(bulk))
print("  (3) notification latency, idle     p50 %d ms, p99 %d ms (%d single transfers: source told -> target told)" % pcts(idle))
whole = sorted(int(l) for l in open(d + "/phase3.ms") if l.strip())
if whole:
    print("      whole transfer, idle           p50 %d ms, p99 %d ms (owner's request -> acknowledged)"
          % (whole[len(whole) // 2], whole[min(len(whole) - 1, int(0.99 * len(whole)))]))
print("  goal 1000 transfers/s: %s" % ("met" if rate >= 1000 else "not met on this machine: see the floor (CPU per transfer of the crypto alone) and the CPU split"))
PY
