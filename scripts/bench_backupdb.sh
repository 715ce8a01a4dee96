#!/usr/bin/env bash
# Benchmark of the public backup DB read path (issues #4 and #20), called by scripts/bench.sh.
#
#   scripts/bench_backupdb.sh [BUILD_DIR]
#
# wrk, 64 connections, GET /v1/records/{chip_id} with chip IDs drawn at random from all N records,
# against keyline-backupdb and against a private nginx serving the very same JSON bodies as static
# files, in the same run, over HTTP (the server's behind-a-proxy mode) and HTTPS (its own TLS). Each
# line is req/s, p99 and the ratio to nginx over the same protocol. The server runs in three modes:
#   warm     every record preloaded into its cache (--preload), as nginx has the files in the page cache
#   cold        no cache (--cache 0): every read is a database lookup, what a billion records means
#   cold-batch  the same with lookups batched while every session is out (--read-batch 32)
# and with 1 and 2 read nodes. A read node is a server process and the database it reads: node 1 the
# server on the bench database (the primary), node 2 a second server whose reads go to a streaming
# replica of it (scripts/pg.sh start-replica, serve --replica; writes would still go to the primary),
# 32 wrk connections each, req/s summed, p99 the worse of the two. The replica is made for the run
# (a base backup) and removed at exit. On one 2-core machine both clusters, both servers and wrk
# share the same cores, so this measures that reads split over two database nodes and what the
# second node costs, not the capacity a second machine adds. The script checks each server's
# /metrics: node 2's lookups were answered by the replica, node 1's by the primary.
# Goal (issue #20): cold p99 < 5 ms and ratio >= 0.5 (2-core machine); docs/scale.md discusses the figures.
#
# The N records are synthetic but well-formed rows (chip ID, Luhn-valid IMEI, a backup package
# header naming the chip, a real certificate, record hash, JSON body), inserted directly by one
# INSERT ... SELECT generate_series as the table owner: publishing a million records through
# the API would measure the write path, not the read path. Publishing is measured by the tests.
#
# Environment: KEYLINE_BENCH_RECORDS (1000000; 10000000 is the issue's size: 17 minutes to fill on
# 2 cores and 19 GB of database), KEYLINE_BENCH_STATIC_RECORDS (all: nginx gets files for the first M
# records only, at 4 KiB each, and its wrk draws from those M), KEYLINE_BENCH_SECONDS (15 per measurement; KEYLINE_BENCH_WARMUP, the same, before each),
# KEYLINE_BENCH_DIR (.keyline/bench/backupdb; the filled database and the static files are kept there
# and reused), KEYLINE_BENCH_MODES ("warm cold cold-batch"), KEYLINE_BENCH_NODES ("1 2"),
# KEYLINE_BENCH_HTTPS (1: HTTPS too), KEYLINE_BENCH_SIZES (1: print table and index bytes per record),
# KEYLINE_BENCH_PREWARM (0; 1: the lookup indexes loaded into shared_buffers first, see below).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build}
bin=$build/bin/keyline-backupdb
records=${KEYLINE_BENCH_RECORDS:-1000000}
seconds=${KEYLINE_BENCH_SECONDS:-15}
dir=${KEYLINE_BENCH_DIR:-$repo/.keyline/bench/backupdb}
static=${KEYLINE_BENCH_STATIC_RECORDS:-$records}
modes=${KEYLINE_BENCH_MODES:-warm cold cold-batch}
nodes=${KEYLINE_BENCH_NODES:-1 2}
if [ "$static" -lt 1 ] || [ "$static" -gt "$records" ]; then
  echo "bench_backupdb: KEYLINE_BENCH_STATIC_RECORDS must be 1..$records" >&2
  exit 2
fi
[ -x "$bin" ] || { echo "bench_backupdb: $bin not built" >&2; exit 2; }
for tool in wrk nginx psql openssl python3; do
  command -v "$tool" >/dev/null || { echo "bench_backupdb: $tool missing (scripts/setup.sh)" >&2; exit 2; }
done
mkdir -p "$dir"
chmod 755 "$dir"

server_pids=()
replica_dirs=()
nginx_started=""
remove_replica() {  # dir: stopped, and its data (a symlink's target too) removed
  "$repo/scripts/pg.sh" stop "$1" >/dev/null 2>&1 || true
  if [ -e "$1/data" ]; then rm -rf "$(readlink -f "$1/data")"; fi
  rm -rf "$1"
}
cleanup() {
  for p in "${server_pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  [ -n "$nginx_started" ] && nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -s stop 2>/dev/null || true
  for r in "${replica_dirs[@]}"; do remove_replica "$r"; done
  "$repo/scripts/pg.sh" stop "$dir/pg" >/dev/null || true
}
trap cleanup EXIT

"$repo/scripts/pg.sh" start "$dir/pg" >/dev/null
owner=$("$repo/scripts/pg.sh" conninfo "$dir/pg")
port=$(cat "$dir/pg/port")
role_pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$role_pw" >"$dir/role.pass"
# Passwords reach the programs through files and the environment, never argv (docs/operations.md).
KEYLINE_BACKUPDB_DB="$owner" "$bin" migrate --role-password-file "$dir/role.pass" >/dev/null

have=$(psql "$owner" -Atq -c "SELECT count(*) FROM records")
if [ "$have" -lt "$records" ]; then
  echo "bench_backupdb: filling $records synthetic records (once; kept in $dir) ..."
  fill_start=$(date +%s)
  # One real P-256 certificate for every row; its DER is the identity certificate column (kept, so
  # that a resumed fill's rows carry the same one).
  [ -f "$dir/sample.pem" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/sample.key" \
    -out "$dir/sample.pem" -subj "/serialNumber=490154203237518" -days 365 2>/dev/null
  der_hex=$(openssl x509 -in "$dir/sample.pem" -outform DER | od -An -v -tx1 | tr -d ' \n')
  pem_json=$(awk '{printf "%s\\n", $0}' "$dir/sample.pem")
  # One transaction per million rows: a fill stopped half-way (10M take most of an hour) keeps the
  # chunks committed, and the next run goes on from count(*).
  from=$have
  while [ "$from" -lt "$records" ]; do
    to=$((from + 1000000 < records ? from + 1000000 : records))
    psql "$owner" -q -v ON_ERROR_STOP=1 -v der_hex="$der_hex" -v pem_json="$pem_json" -v first="$from" -v n="$to" <<'SQL'
CREATE FUNCTION pg_temp.imei(n bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  -- TAC + 6-digit serial + Luhn check digit (3GPP TS 23.003 Annex B). A TAC holds 10^6 serials, so
  -- record n has TAC 35780502 + n / 10^6 and serial n mod 10^6 (lpad alone truncates a 7th digit:
  -- record 1,000,000 would get record 100,000's IMEI, and the unique IMEI stops a 10M fill).
  SELECT d || ((10 - sum(CASE WHEN i % 2 = 0 THEN (x * 2) / 10 + (x * 2) % 10 ELSE x END) % 10) % 10)::text
  FROM (SELECT (35780502 + n / 1000000)::text || lpad((n % 1000000)::text, 6, '0') AS d) s,
       LATERAL (SELECT i, substr(s.d, i, 1)::int AS x FROM generate_series(1, 14) i) t
  GROUP BY d
$$;
INSERT INTO records (chip_id, imei, record_hash, backup, identity_der, body_json, published_at)
SELECT chip, imei, hash, backup, decode(:'der_hex', 'hex'),
       json_build_object('chip_id', chip, 'imei', imei, 'backup', encode(backup, 'base64'),
                         'certificates', json_build_array(:'pem_json'::text), 'record_hash', hash,
                         'published_at', '2026-01-01T00:00:00Z')::text,
       '2026-01-01T00:00:00Z'
FROM (
  SELECT g, upper(lpad(to_hex(g), 20, '0')) AS chip, pg_temp.imei(g) AS imei,
         upper(encode(sha256(int8send(g)), 'hex')) AS hash,
         -- "KLBK" || version 1 || AEAD 1 || chip ID || 12-byte nonce || 48 bytes of ciphertext+tag
         '\x4b4c424b0101'::bytea || decode(lpad(to_hex(g), 20, '0'), 'hex') ||
           substring(sha256(int8send(g)) from 1 for 12) || sha256(int8send(-g)) || substring(sha256(int8send(g + 1)) from 1 for 16)
           AS backup
  FROM generate_series(:first, :n - 1) g
  OFFSET 0  -- a fence: the subquery is not pulled up, so each row's IMEI is computed once, not twice
) s;
SQL
    echo "bench_backupdb: $to of $records records ($(( $(date +%s) - fill_start )) s)"
    from=$to
  done
  psql "$owner" -q -c "ANALYZE records"
  echo "bench_backupdb: filled $((records - have)) records in $(( $(date +%s) - fill_start )) s"
fi

# The same JSON bodies as static files for nginx (written once), for the first $static records: at
# 4 KiB a file 10M records would need 40 GB of disk besides the database's 19 GB.
www=$dir/www/v1/records
if [ ! -f "$dir/www/.complete-$static" ]; then
  echo "bench_backupdb: writing $static static files for nginx ..."
  mkdir -p "$www"
  psql "$owner" -Atq -v FETCH_COUNT=20000 -F $'\t' -c "SELECT chip_id, body_json FROM records ORDER BY seq LIMIT $static" |
    python3 -c '
import sys, os
root = sys.argv[1]
for line in sys.stdin:
    chip, body = line.rstrip("\n").split("\t", 1)
    with open(os.path.join(root, chip), "w") as f:
        f.write(body)
' "$www"
  touch "$dir/www/.complete-$static"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Private nginx: its own prefix, config and port; static files, keep-alive, no access log
# (keyline-backupdb runs with --log off too).
nport=$(free_port)
nsport=$(free_port)
[ -f "$dir/tls.pem" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/tls.key" \
  -out "$dir/tls.pem" -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -days 3650 2>/dev/null
# The server wants a CA for --station-ca (who may publish); the benchmark only reads, so any CA does.
[ -f "$dir/station-ca.pem" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$dir/station-ca.key" -out "$dir/station-ca.pem" -subj "/CN=bench station CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -days 3650 2>/dev/null
mkdir -p "$dir/nginx/logs" "$dir/nginx/tmp"
user_line=""
[ "$(id -u)" -eq 0 ] && user_line="user root;"
cat > "$dir/nginx/nginx.conf" <<CONF
$user_line
worker_processes auto;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  default_type application/json;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  keepalive_timeout 65;
  client_body_temp_path $dir/nginx/tmp/body;
  proxy_temp_path $dir/nginx/tmp/proxy;
  fastcgi_temp_path $dir/nginx/tmp/fastcgi;
  uwsgi_temp_path $dir/nginx/tmp/uwsgi;
  scgi_temp_path $dir/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$nport;
    listen 127.0.0.1:$nsport ssl;
    ssl_certificate $dir/tls.pem;
    ssl_certificate_key $dir/tls.key;
    root $dir/www;
    location /v1/records/ { add_header Cache-Control "public, max-age=31536000, immutable"; }
  }
}
CONF
nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf"
nginx_started=1

# wrk's 64 connections all come from 127.0.0.1, and those of the warm-up may not all be closed on the
# server's side when the measured run opens its own: --max-per-client above 64 keeps the cap (64 by
# default, a 503 beyond) out of the figures.
# Cold reads wait on the database, not on a core: 64 workers (as many as connections) keep every
# request in flight, and 16 sessions carry them, one statement each (cold) or batched (cold-batch).
flags_of() {  # mode -> serve flags
  case "$1" in
    warm) echo "--threads 16 --cache $((records * 2)) --preload" ;;  # twice N: hashing into shards never evicts
    cold) echo "--threads 64 --cache 0" ;;
    cold-batch) echo "--threads 64 --cache 0 --read-batch 32" ;;
    *) echo "bench_backupdb: unknown mode $1" >&2; exit 2 ;;
  esac
}

# Read node n > 1 reads replica n-1 (a hot standby of the bench database), made here once for the run:
# a fresh base backup, since a standby kept from an earlier run may need WAL the primary has recycled.
# shellcheck disable=SC2086
max_nodes=$(printf '%s\n' $nodes | sort -n | tail -1)
for n in $(seq 2 "$max_nodes"); do
  r=$dir/replica$((n - 1))
  remove_replica "$r"  # one left by a run that was killed
  replica_dirs+=("$r")
  echo "bench_backupdb: base backup for read node $n's replica ($r) ..."
  "$repo/scripts/pg.sh" start-replica "$dir/pg" "$r" >/dev/null
done
replica_db() {  # node -> the server's --replica conninfo ("" for node 1: it reads the primary)
  [ "$1" -gt 1 ] || return 0
  echo "host=127.0.0.1 port=$(cat "$dir/replica$(($1 - 1))/port") user=keyline_backupdb dbname=postgres"
}

start_servers() {  # count scheme mode; sets server_pids, urls and ops_urls, waits until all are healthy
  local count=$1 scheme=$2 tls=()
  [ "$scheme" = https ] && tls=(--tls-cert "$dir/tls.pem" --tls-key "$dir/tls.key" --station-ca "$dir/station-ca.pem")
  [ "$scheme" = http ] && tls=(--plain-http)
  # shellcheck disable=SC2207
  local extra=($(flags_of "$3"))
  urls=()
  ops_urls=()
  for n in $(seq "$count"); do
    local bport oport replica=()
    bport=$(free_port)
    oport=$(free_port)
    [ "$n" = 1 ] || replica=(--replica "$(replica_db "$n")")
    "$bin" serve --listen "127.0.0.1:$bport" --ops-listen "127.0.0.1:$oport" --log off \
      --db-pool 16 --max-per-client 256 --db "host=127.0.0.1 port=$port user=keyline_backupdb dbname=postgres" \
      --db-password-file "$dir/role.pass" --trust "$dir/sample.pem" --no-log "${tls[@]}" "${extra[@]}" "${replica[@]}" \
      >"$dir/server$n.out" 2>&1 &
    server_pids+=($!)
    urls+=("$scheme://127.0.0.1:$bport/")
    ops_urls+=("http://127.0.0.1:$oport/")
    # "ok": the database answers and, for a node with a replica, the replica is up (takes reads).
    for _ in $(seq 600); do
      curl -sf "http://127.0.0.1:$oport/healthz" 2>/dev/null | grep -q '"status":"ok"' && continue 2
      sleep 0.2
    done
    echo "bench_backupdb: server did not start: $(cat "$dir/server$n.out")" >&2
    exit 1
  done
}
stop_servers() {
  for p in "${server_pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  server_pids=()
}

random_lua() {  # count file: each request asks for a random one of the first `count` chip IDs
  cat > "$2" <<LUA
-- Each request asks for a random one of the first $1 chip IDs.
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
  return wrk.format("GET", string.format("/v1/records/%020X", math.random(0, $1 - 1)))
end
LUA
}
random_lua "$records" "$dir/random.lua"          # the server: all N records
random_lua "$static" "$dir/random-static.lua"    # nginx: the M records it has files for
wrk_script=$dir/random.lua

one_wrk() {  # threads connections url -> "req/s p99_ms" (errors reported on stderr)
  local out rps p99 errors
  out=$(wrk -t"$1" -c"$2" -d"${seconds}s" --latency -s "$wrk_script" "$3")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [ -z "$errors" ] || echo "bench_backupdb: $3: $errors" >&2
  echo "$rps $p99"
}

run() {  # url... -> "req/s p99_ms": 64 connections split over the urls, at once; req/s summed, p99 the worst
  # Two wrk threads in all (the client's share of the 2 cores stays the same for 1 and 2 nodes).
  local per=$((64 / $#)) threads=$((2 / $#)) tmp=$dir/run.$$ i=0
  [ "$threads" -ge 1 ] || threads=1
  local pids=()
  for u in "$@"; do one_wrk "$threads" "$per" "$u" >"$tmp.$i" & pids+=($!); i=$((i + 1)); done
  wait "${pids[@]}"  # these only: the servers are children too
  cat "$tmp".* | awk '{r += $1; if ($2 > p) p = $2} END {printf "%.0f %.2f\n", r, p}'
  rm -f "$tmp".*
}

ticks() {  # pid... -> CPU clock ticks (user + system) they have used so far
  local t=0
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
pg_pids() {  # the backends of the bench database and of its replicas
  for d in "$dir/pg" "${replica_dirs[@]}"; do pgrep -P "$(head -1 "$d/data/postmaster.pid")" || true; done
}

# node_reads ops_url node -> the lookups that server's read pool sent to database node `node`
node_reads() {
  curl -sf "${1}metrics" | awk -v s="keyline_backupdb_db_reads_total{node=\"$2\"}" '$1 == s {print $2; f=1} END {if (!f) print 0}'
}
# After a run with replicas: every read node's lookups were answered where it should read (node 1:
# the primary; node n: its replica; every chip ID exists, so none is re-asked of the primary for a miss,
# but a lookup that waits past --replica-timeout-ms for a replica session goes to the primary instead:
# on 2 saturated cores that was 0.1-2 % of them, so up to 10 % is accepted), and the replica's
# pg_stat_activity shows the server's sessions. Prints one line per node.
check_nodes() {  # label
  local n got rest sessions
  for n in $(seq 2 "${#ops_urls[@]}"); do
    got=$(node_reads "${ops_urls[$((n - 1))]}" replica0)
    rest=$(node_reads "${ops_urls[$((n - 1))]}" primary)
    echo "bench_backupdb: $1: read node $n: $got lookups on its replica, $rest on the primary" >&2
    awk -v g="$got" -v r="$rest" 'BEGIN {exit !(g > 0 && r <= g / 10)}' ||
      { echo "bench_backupdb: read node $n's reads did not go to its replica" >&2; exit 1; }
    sessions=$(psql "$(cat "$dir/replica$((n - 1))/conninfo")" -Atq -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'keyline_backupdb'")
    [ "$sessions" -gt 0 ] || { echo "bench_backupdb: no server session on replica $((n - 1))" >&2; exit 1; }
  done
  got=$(node_reads "${ops_urls[0]}" primary)
  echo "bench_backupdb: $1: read node 1: $got lookups on the primary" >&2
}

# label pids url...: warm-up, then the measured run; prints "label req/s p99 cpu_us_per_req_of_pids
# cpu_us_per_req_of_postgres": where the CPU time of a request goes (server or nginx, and database).
measure() {
  local label=$1 pids=$2 rps p99 t0 t1 p0 p1 hz
  shift 2
  seconds=$warmup run "$@" >/dev/null
  # shellcheck disable=SC2086
  t0=$(ticks $pids)
  # shellcheck disable=SC2046
  p0=$(ticks $(pg_pids))
  read -r rps p99 < <(run "$@")
  # shellcheck disable=SC2086
  t1=$(ticks $pids)
  # shellcheck disable=SC2046
  p1=$(ticks $(pg_pids))
  hz=$(getconf CLK_TCK)
  printf '%s %s %s %s %s\n' "$label" "$rps" "$p99" \
    "$(awk -v d=$((t1 - t0)) -v r="$rps" -v s="$seconds" -v hz="$hz" 'BEGIN {printf "%.1f", d / hz * 1e6 / (r * s)}')" \
    "$(awk -v d=$((p1 - p0)) -v r="$rps" -v s="$seconds" -v hz="$hz" 'BEGIN {printf "%.1f", d / hz * 1e6 / (r * s)}')"
}

# KEYLINE_BENCH_PREWARM=1: the chip-ID and IMEI indexes are read into shared_buffers before measuring, as
# docs/scale.md sizes a replica (the lookup index resident, one heap page per cold read). Give the cluster
# the room for them: KEYLINE_PG_OPTS="-c shared_buffers=2GB" (scripts/pg.sh; 128MB by default, which at 10M
# records holds neither the 406 MB of chip-ID index nor the heap: each lookup then reads its pages from
# the kernel's page cache).
if [ "${KEYLINE_BENCH_PREWARM:-0}" = 1 ]; then
  psql "$owner" -Atq -v ON_ERROR_STOP=1 <<'SQL' | awk '{s += $1} END {printf "bench_backupdb: prewarmed %d index pages (shared_buffers ", s}'
CREATE EXTENSION IF NOT EXISTS pg_prewarm;
SELECT pg_prewarm(c.oid) FROM pg_class c
 WHERE c.relkind = 'i' AND (c.relname ~ '^records_p[0-9]+_pkey$' OR c.relname = 'record_imei_pkey');
SQL
  psql "$owner" -Atq -c "SHOW shared_buffers" | sed 's/$/)/'
fi

chip0=$(printf '%020X' 0)
warmup=${KEYLINE_BENCH_WARMUP:-$seconds}
results=$dir/results.txt
: >"$results"
schemes=http
[ "${KEYLINE_BENCH_HTTPS:-1}" = 1 ] && schemes="http https"
for scheme in $schemes; do
  nurl="http://127.0.0.1:$nport/"
  [ "$scheme" = https ] && nurl="https://127.0.0.1:$nsport/"
  npids=$(pgrep -P "$(cat "$dir/nginx/nginx.pid")" | tr '\n' ' ')
  wrk_script=$dir/random-static.lua
  measure "$scheme nginx 1" "$npids" "$nurl" >>"$results"
  for count in $nodes; do
    wrk_script=$dir/random-static.lua
    [ "$count" = 1 ] ||
      measure "$scheme nginx $count" "$npids" $(for _ in $(seq "$count"); do echo "$nurl"; done) >>"$results"
    wrk_script=$dir/random.lua
    for mode in $modes; do
      start_servers "$count" "$scheme" "$mode"
      curl -skf "${urls[0]}v1/records/$chip0" | cmp -s - "$www/$chip0" ||
        { echo "bench_backupdb: server and nginx bodies differ" >&2; exit 1; }
      measure "$scheme $mode $count" "${server_pids[*]}" "${urls[@]}" >>"$results"
      # warm answers from its cache after the preload (read on the primary), so only cold runs show
      [ "$count" = 1 ] || [ "$mode" = warm ] || check_nodes "$scheme $mode $count"
      stop_servers
    done
  done
done

echo "backupdb GET /v1/records/{chip_id}: $records records, wrk 64 connections, ${seconds}s, $(nproc) cores"
[ "$static" = "$records" ] ||
  echo "  (nginx: files for the first $static of the $records records only, its wrk draws from those $static)"
echo "  (nodes: read nodes, a server process and its database: node 1 the primary, node 2 a streaming"
echo "   replica of it; all on this one machine's cores. ratio: to nginx, same protocol, same number of wrk processes)"
echo "  (cpu us/req: CPU time of the server processes, or nginx's workers, and of the databases' backends,"
echo "   per request, in the measured run; the rest of the machine's time goes to wrk and to others)"
printf '  %-6s %-10s %5s %10s %9s %6s %12s %10s\n' scheme server nodes req/s p99_ms ratio "cpu us/req" "db us/req"
verdict="goal met"
while read -r scheme what count rps p99 cpu db; do
  ref=$(awk -v s="$scheme" -v c="$count" '$1 == s && $2 == "nginx" && $3 == c {print $4}' "$results")
  ratio=$(awk -v a="$rps" -v b="$ref" 'BEGIN {printf "%.2f", a / b}')
  printf '  %-6s %-10s %5s %10.0f %9.2f %6s %12s %10s\n' "$scheme" "$what" "$count" "$rps" "$p99" "$ratio" "$cpu" "$db"
  if [ "$what" = cold ] && [ "$count" = 1 ]; then
    awk -v r="$ratio" -v p="$p99" 'BEGIN {exit !(r >= 0.5 && p < 5)}' || verdict="goal NOT met"
  fi
done <"$results"
echo "  cold, 1 node: ratio >= 0.5 and p99 < 5 ms over HTTP and HTTPS: $verdict"

if [ "${KEYLINE_BENCH_SIZES:-1}" = 1 ]; then
  # docs/scale.md's bytes per record: each table (heap with its TOAST) and index, the sixteen
  # partitions of records (0005) summed as records_pNN, over the rows there are.
  psql "$owner" -Atq -F ' ' -c "
    SELECT regexp_replace(c.relname, '_p[0-9]{2}', '_pNN'), sum(pg_table_size(c.oid)),
           round(sum(pg_table_size(c.oid))::numeric / greatest(1, (SELECT count(*) FROM records)), 1)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') AND (c.relname LIKE 'record%')
    GROUP BY 1 ORDER BY 2 DESC" | awk '{printf "  size %-24s %12.0f bytes %8.1f bytes/record\n", $1, $2, $3}'
fi
