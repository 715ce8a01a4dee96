#!/usr/bin/env bash
# Benchmark of the public DB's transparency log (issue #18), called by scripts/bench.sh (part "tlog").
#
#   scripts/bench_tlog.sh [BUILD_DIR]
#
# 1. Publish rate with the log on vs --no-log, same run, same machine: bench_tlog_publish (a station
#    over mutual TLS, 8 connections) against two servers on two fresh databases, alternating rounds.
#    Both sequence every record (the publish statement draws the leaf index either way, 0003_log.sql);
#    the difference is the integrator (tiles, entry bundles, a checkpoint signed on the token every 250 ms).
# 2. Proofs at a large tree: KEYLINE_BENCH_TLOG_LEAVES (1,000,000) records and their log entries
#    inserted directly by one INSERT ... SELECT generate_series as the owner (kept in the bench dir and
#    reused), integrated by serve at start (its catch-up rate is printed), then wrk, 16 connections,
#    GET /v1/records/{chip_id}/proof for random chips: req/s and p99 (serve --preload, as the read bench).
#    At most 1,000,000 leaves (the synthetic IMEIs have a 6-digit serial).
# 3. Tile reads: wrk, 64 connections, random full level-0 tiles from keyline-backupdb against a private
#    nginx serving the same tile files (exported from the database), same run; req/s of both and the ratio.
# Environment: KEYLINE_BENCH_TLOG_LEAVES, KEYLINE_BENCH_TLOG_PUBLISH (records per round, 1500),
# KEYLINE_BENCH_SECONDS (10 here), KEYLINE_BENCH_TLOG_DIR (.keyline/bench/tlog).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build}
bin=$build/bin/keyline-backupdb
driver=$build/bin/bench_tlog_publish
leaves=${KEYLINE_BENCH_TLOG_LEAVES:-1000000}
per_round=${KEYLINE_BENCH_TLOG_PUBLISH:-1500}
seconds=${KEYLINE_BENCH_SECONDS:-10}
dir=${KEYLINE_BENCH_TLOG_DIR:-$repo/.keyline/bench/tlog}
for f in "$bin" "$driver"; do [ -x "$f" ] || { echo "bench_tlog: $f not built" >&2; exit 2; }; done
for tool in wrk nginx psql python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench_tlog: $tool missing (scripts/setup.sh)" >&2; exit 2; }
done
mkdir -p "$dir"
chmod 755 "$dir"

pids=()
nginx_started=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  [ -n "$nginx_started" ] && nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -s stop 2>/dev/null || true
  "$repo/scripts/pg.sh" stop "$dir/pg" >/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$repo/scripts/pg.sh" start "$dir/pg" >/dev/null
owner=$("$repo/scripts/pg.sh" conninfo "$dir/pg")
pgport=$(cat "$dir/pg/port")
[ -f "$dir/role.pass" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$dir/role.pass")
"$repo/scripts/hsm.sh" init "$dir/hsm" keyline-bench-log >/dev/null
export SOFTHSM2_CONF=$dir/hsm/softhsm2.conf
export KEYLINE_BACKUPDB_LOG_TOKEN_MODULE KEYLINE_BACKUPDB_LOG_TOKEN_LABEL=keyline-bench-log
KEYLINE_BACKUPDB_LOG_TOKEN_MODULE=$(cat "$dir/hsm/module")
export KEYLINE_BACKUPDB_LOG_TOKEN_PIN_FILE=$dir/hsm/user.pin KEYLINE_BACKUPDB_LOG_ORIGIN=keyline-bench-log
[ -s "$dir/log.vkey" ] || "$bin" log init >"$dir/log.vkey"

# db NAME [fresh]: a migrated database (dropped first when fresh); echoes the role's conninfo for serve.
db() {
  local name=$1
  if [ "${2:-}" = fresh ]; then PGOPTIONS="-c client_min_messages=warning" psql "$owner" -qc "DROP DATABASE IF EXISTS $name" >/dev/null; fi
  psql "$owner" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1 ||
    psql "$owner" -qc "CREATE DATABASE $name" >/dev/null
  KEYLINE_BACKUPDB_DB="${owner/dbname=postgres/dbname=$name}" "$bin" migrate --role-password-file "$dir/role.pass" >/dev/null
  echo "host=127.0.0.1 port=$pgport user=keyline_backupdb dbname=$name"
}

# serve PORT DBCONNINFO flags...: starts a server, waits until healthy; its pid is the last of pids.
serve() {
  local port=$1 conn=$2 scheme=https
  shift 2
  case " $* " in *" --plain-http "*) scheme=http ;; esac
  "$bin" serve --listen "127.0.0.1:$port" --ops-listen 127.0.0.1:0 --log off --db "$conn" \
    --db-password-file "$dir/role.pass" --trust "$dir/pub/root.pem" "$@" >"$dir/server-$port.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 600); do
    curl -skf "$scheme://127.0.0.1:$port/healthz" >/dev/null && return
    sleep 0.1
  done
  echo "bench_tlog: server did not start: $(cat "$dir/server-$port.out")" >&2
  exit 1
}
stop_last() { local p=${pids[-1]}; kill "$p"; wait "$p" 2>/dev/null || true; unset 'pids[-1]'; }
tls=(--tls-cert "$dir/pub/server.pem" --tls-key "$dir/pub/server.key" --station-ca "$dir/pub/service_ca.pem")

# --- 1. publish rate, log on vs off -----------------------------------------------------------
rounds=2
need=$((2 * rounds * per_round))
if [ "$(wc -l 2>/dev/null <"$dir/pub/records.jsonl" || echo 0)" -lt "$need" ]; then
  echo "bench_tlog: making $need records (once; kept in $dir/pub) ..."
  mkdir -p "$dir/pub"
  "$driver" prepare "$dir/pub" "$need"
fi
off_db=$(db tlog_pub_off fresh)
on_db=$(db tlog_pub_on fresh)
off_port=$(free_port)
on_port=$(free_port)
serve "$off_port" "$off_db" --no-log "${tls[@]}"
serve "$on_port" "$on_db" "${tls[@]}"
off_sum=0
on_sum=0
for r in $(seq 0 $((rounds - 1))); do
  off=$("$driver" publish "https://127.0.0.1:$off_port" "$dir/pub" 8 $((r * 2 * per_round)) "$per_round")
  on=$("$driver" publish "https://127.0.0.1:$on_port" "$dir/pub" 8 $(((r * 2 + 1) * per_round)) "$per_round")
  off_sum=$(awk -v a="$off_sum" -v b="$off" 'BEGIN {print a + b}')
  on_sum=$(awk -v a="$on_sum" -v b="$on" 'BEGIN {print a + b}')
done
sleep 0.5
integrated=$(psql "${owner/dbname=postgres/dbname=tlog_pub_on}" -Atqc "SELECT max(tree_size) FROM log_checkpoints")
stop_last
stop_last

# --- 2. proofs at a large tree ------------------------------------------------------------------
big_db=$(db tlog_big)
big_owner=${owner/dbname=postgres/dbname=tlog_big}
have=$(psql "$big_owner" -Atqc "SELECT count(*) FROM log_entries")
if [ "$have" -lt "$leaves" ]; then
  echo "bench_tlog: inserting $((leaves - have)) records and log entries (once; kept in $dir) ..."
  # The owner steps the counter by more than one here: the trigger that forbids it is for the server.
  psql "$big_owner" -q -v ON_ERROR_STOP=1 -v first="$have" -v n="$leaves" <<'SQL'
CREATE FUNCTION pg_temp.imei(serial bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  -- TAC 35780502 + 6-digit serial + Luhn check digit (3GPP TS 23.003 Annex B), as bench_backupdb.sh.
  SELECT d || ((10 - sum(CASE WHEN i % 2 = 0 THEN (x * 2) / 10 + (x * 2) % 10 ELSE x END) % 10) % 10)::text
  FROM (SELECT '35780502' || lpad(serial::text, 6, '0') AS d) s,
       LATERAL (SELECT i, substr(s.d, i, 1)::int AS x FROM generate_series(1, 14) i) t
  GROUP BY d
$$;
BEGIN;
INSERT INTO records (chip_id, imei, record_hash, backup, identity_der, body_json, published_at)
SELECT upper(lpad(to_hex(g), 20, '0')), pg_temp.imei(g), upper(encode(sha256(int8send(g)), 'hex')),
       '\x00'::bytea, '\x00'::bytea, '{}', '2026-01-01T00:00:00Z'
FROM generate_series(:first, :n - 1) g;
INSERT INTO log_entries (leaf_index, record_seq, entry)
SELECT row_number() OVER (ORDER BY seq) - 1 + :first, seq,
       '\x4b4c4c4501'::bytea || decode(chip_id, 'hex') || convert_to(imei, 'UTF8') || decode(record_hash, 'hex')
FROM records WHERE seq > (SELECT coalesce(max(record_seq), 0) FROM log_entries);
ALTER TABLE log_sequence DISABLE TRIGGER log_sequence_counts_up;
UPDATE log_sequence SET next_index = (SELECT count(*) FROM log_entries);
ALTER TABLE log_sequence ENABLE TRIGGER log_sequence_counts_up;
COMMIT;
ANALYZE records;
ANALYZE log_entries;
SQL
fi
before=$(psql "$big_owner" -Atqc "SELECT coalesce(max(tree_size), 0) FROM log_checkpoints")
big_port=$(free_port)
t0=$(date +%s.%N)
# --preload: the record cache answers the chip -> leaf index lookup, as it answers record reads.
serve "$big_port" "$big_db" --plain-http --preload --cache $((leaves * 2)) ${KEYLINE_BENCH_TLOG_SERVE_FLAGS:-}
size=0
for _ in $(seq 3000); do
  size=$(psql "$big_owner" -Atqc "SELECT coalesce(max(tree_size), 0) FROM log_checkpoints")
  [ "$size" -ge "$leaves" ] && break
  sleep 0.1
done
t1=$(date +%s.%N)
catchup=$(awk -v n=$((size - before)) -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}')

cat >"$dir/proof.lua" <<LUA
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/v1/records/%020X/proof", math.random(0, $leaves - 1)))
end
LUA
run() {  # connections lua url -> "req/s p99_ms"
  local out rps p99
  out=$(wrk -t2 -c"$1" -d"${seconds}s" --latency -s "$2" "$3")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [ -z "$errors" ] || echo "bench_tlog: $3: $errors" >&2
  echo "$rps $p99"
}
chip0=$(printf '%020X' 0)
curl -sf "http://127.0.0.1:$big_port/v1/records/$chip0/proof" >/dev/null || { echo "bench_tlog: no proof for leaf 0" >&2; exit 1; }
# Warm the tile cache (3,906 level-0 tiles at 1M leaves) as the nginx side has its page cache warm.
wrk -t2 -c16 -d"${seconds}s" -s "$dir/proof.lua" "http://127.0.0.1:$big_port/" >/dev/null
read -r p_rps p_p99 < <(run 16 "$dir/proof.lua" "http://127.0.0.1:$big_port/")

# --- 3. tile reads vs nginx ---------------------------------------------------------------------
full=$((size / 256))
www=$dir/www/v1/log
if [ ! -f "$dir/www/.complete-$full" ]; then
  echo "bench_tlog: writing $full level-0 tiles for nginx ..."
  rm -rf "$dir/www"
  mkdir -p "$www"
  psql "$big_owner" -Atq -v FETCH_COUNT=2000 -F $'\t' \
    -c "SELECT path, encode(data, 'hex') FROM log_tiles WHERE path LIKE 'tile/0/%' AND path NOT LIKE '%.p/%'" |
    python3 -c '
import os, sys
root = sys.argv[1]
for line in sys.stdin:
    path, data = line.rstrip("\n").split("\t", 1)
    f = os.path.join(root, path)
    os.makedirs(os.path.dirname(f), exist_ok=True)
    with open(f, "wb") as out:
        out.write(bytes.fromhex(data))
' "$www"
  touch "$dir/www/.complete-$full"
fi
nport=$(free_port)
mkdir -p "$dir/nginx/logs" "$dir/nginx/tmp"
user_line=""
[ "$(id -u)" -eq 0 ] && user_line="user root;"
cat >"$dir/nginx/nginx.conf" <<CONF
$user_line
worker_processes auto;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 10000000;
  client_body_temp_path $dir/nginx/tmp/body;
  proxy_temp_path $dir/nginx/tmp/proxy;
  fastcgi_temp_path $dir/nginx/tmp/fastcgi;
  uwsgi_temp_path $dir/nginx/tmp/uwsgi;
  scgi_temp_path $dir/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$nport;
    root $dir/www;
    location /v1/log/ { add_header Cache-Control "public, max-age=31536000, immutable"; }
  }
}
CONF
nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf"
nginx_started=1
cat >"$dir/tile.lua" <<LUA
-- A random full level-0 tile of the $full (C2SP tlog-tiles path: 3-digit elements, x-prefixed but the last).
math.randomseed(os.time())
local function index_path(n)
  local s = string.format("%03d", n % 1000)
  n = math.floor(n / 1000)
  while n > 0 do
    s = string.format("x%03d/", n % 1000) .. s
    n = math.floor(n / 1000)
  end
  return s
end
request = function()
  return wrk.format("GET", "/v1/log/tile/0/" .. index_path(math.random(0, $full - 1)))
end
LUA
probe=/v1/log/tile/0/000
cmp -s <(curl -sf "http://127.0.0.1:$big_port$probe") <(curl -sf "http://127.0.0.1:$nport$probe") ||
  { echo "bench_tlog: server and nginx tiles differ" >&2; exit 1; }
wrk -t2 -c64 -d"${seconds}s" -s "$dir/tile.lua" "http://127.0.0.1:$nport/" >/dev/null
wrk -t2 -c64 -d"${seconds}s" -s "$dir/tile.lua" "http://127.0.0.1:$big_port/" >/dev/null
read -r n_rps n_p99 < <(run 64 "$dir/tile.lua" "http://127.0.0.1:$nport/")
read -r t_rps t_p99 < <(run 64 "$dir/tile.lua" "http://127.0.0.1:$big_port/")

echo "tlog (transparency log of the public DB), $(nproc) cores"
printf '  publish, --no-log     : %8.1f records/s (%d rounds of %d, 8 connections)\n' \
  "$(awk -v s="$off_sum" -v r="$rounds" 'BEGIN {print s / r}')" "$rounds" "$per_round"
printf '  publish, log on       : %8.1f records/s (%s entries integrated when stopped)\n' \
  "$(awk -v s="$on_sum" -v r="$rounds" 'BEGIN {print s / r}')" "$integrated"
echo "  ratio on/off: $(awk -v a="$on_sum" -v b="$off_sum" 'BEGIN {printf "%.2f", a / b}') (goal >= 0.90)"
if [ "$before" -lt "$size" ]; then
  printf '  integration at start  : %s leaves/s (%d leaves to a checkpoint of %d)\n' "$catchup" $((size - before)) "$size"
else
  echo "  integration at start  : (the tree of $size was integrated by an earlier run; delete $dir to measure it)"
fi
printf '  proof at %d leaves: %8.0f req/s  p99 %6.2f ms (16 connections)\n' "$size" "$p_rps" "$p_p99"
printf '  tiles, nginx          : %8.0f req/s  p99 %6.2f ms\n' "$n_rps" "$n_p99"
printf '  tiles, keyline-backupdb: %7.0f req/s  p99 %6.2f ms  (ratio %s)\n' "$t_rps" "$t_p99" \
  "$(awk -v a="$t_rps" -v b="$n_rps" 'BEGIN {printf "%.2f", a / b}')"
