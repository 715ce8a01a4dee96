#!/usr/bin/env bash
# Benchmark of the public backup DB read path (issue #4), called by scripts/bench.sh.
#
#   scripts/bench_backupdb.sh [BUILD_DIR]
#
# wrk, 64 connections, GET /v1/records/{chip_id} with chip IDs drawn at random from all N records,
# against keyline-backupdb (plain HTTP, the behind-a-proxy mode, so the comparison is fair) and
# against a private nginx serving the very same JSON bodies as static files, in the same run.
# Prints req/s of both, the ratio and p99. Goal: ratio >= 0.5 and p99 < 5 ms (2-core machine).
#
# The N records are synthetic but well-formed rows (chip ID, Luhn-valid IMEI, a backup package
# header naming the chip, a real certificate, record hash, JSON body), inserted directly by one
# INSERT ... SELECT generate_series as the table owner: publishing a million records through
# the API would measure the write path, not the read path. Publishing is measured by the tests.
#
# Environment: KEYLINE_BENCH_RECORDS (1000000), KEYLINE_BENCH_SECONDS (15), KEYLINE_BENCH_DIR
# (.keyline/bench/backupdb; the filled database and the static files are kept there and reused),
# KEYLINE_BENCH_PRELOAD (1: the server fills its cache before listening, as nginx has the files in the
# page cache; 0: a cold cache warmed only by the warm-up run), KEYLINE_BENCH_CACHE (records in the server's cache; default twice N, so hashing into shards never evicts).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build}
bin=$build/bin/keyline-backupdb
records=${KEYLINE_BENCH_RECORDS:-1000000}
seconds=${KEYLINE_BENCH_SECONDS:-15}
dir=${KEYLINE_BENCH_DIR:-$repo/.keyline/bench/backupdb}
cache=${KEYLINE_BENCH_CACHE:-$((records * 2))}
preload=--preload
[ "${KEYLINE_BENCH_PRELOAD:-1}" = 1 ] || preload=""
[ -x "$bin" ] || { echo "bench_backupdb: $bin not built" >&2; exit 2; }
for tool in wrk nginx psql openssl python3; do
  command -v "$tool" >/dev/null || { echo "bench_backupdb: $tool missing (scripts/setup.sh)" >&2; exit 2; }
done
mkdir -p "$dir"
chmod 755 "$dir"

server_pid=""
nginx_started=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  [ -n "$nginx_started" ] && nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -s stop 2>/dev/null || true
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
  # One real P-256 certificate for every row; its DER is the identity certificate column.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/sample.key" \
    -out "$dir/sample.pem" -subj "/serialNumber=490154203237518" -days 365 2>/dev/null
  der_hex=$(openssl x509 -in "$dir/sample.pem" -outform DER | od -An -v -tx1 | tr -d ' \n')
  pem_json=$(awk '{printf "%s\\n", $0}' "$dir/sample.pem")
  psql "$owner" -q -v ON_ERROR_STOP=1 -v der_hex="$der_hex" -v pem_json="$pem_json" -v first="$have" -v n="$records" <<'SQL'
CREATE FUNCTION pg_temp.imei(serial bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  -- TAC 35780502 + 6-digit serial + Luhn check digit (3GPP TS 23.003 Annex B).
  SELECT d || ((10 - sum(CASE WHEN i % 2 = 0 THEN (x * 2) / 10 + (x * 2) % 10 ELSE x END) % 10) % 10)::text
  FROM (SELECT '35780502' || lpad(serial::text, 6, '0') AS d) s,
       LATERAL (SELECT i, substr(s.d, i, 1)::int AS x FROM generate_series(1, 14) i) t
  GROUP BY d
$$;
INSERT INTO records (chip_id, imei, record_hash, backup, identity_der, body_json, published_at)
SELECT chip, pg_temp.imei(g), hash, backup, decode(:'der_hex', 'hex'),
       json_build_object('chip_id', chip, 'imei', pg_temp.imei(g), 'backup', encode(backup, 'base64'),
                         'certificates', json_build_array(:'pem_json'::text), 'record_hash', hash,
                         'published_at', '2026-01-01T00:00:00Z')::text,
       '2026-01-01T00:00:00Z'
FROM (
  SELECT g, upper(lpad(to_hex(g), 20, '0')) AS chip,
         upper(encode(sha256(int8send(g)), 'hex')) AS hash,
         -- "KLBK" || version 1 || AEAD 1 || chip ID || 12-byte nonce || 48 bytes of ciphertext+tag
         '\x4b4c424b0101'::bytea || decode(lpad(to_hex(g), 20, '0'), 'hex') ||
           substring(sha256(int8send(g)) from 1 for 12) || sha256(int8send(-g)) || substring(sha256(int8send(g + 1)) from 1 for 16)
           AS backup
  FROM generate_series(:first, :n - 1) g
) s;
ANALYZE records;
SQL
fi

# The same JSON bodies as static files for nginx (written once).
www=$dir/www/v1/records
if [ ! -f "$dir/www/.complete-$records" ]; then
  echo "bench_backupdb: writing $records static files for nginx ..."
  mkdir -p "$www"
  psql "$owner" -Atq -v FETCH_COUNT=20000 -F $'\t' -c "SELECT chip_id, body_json FROM records ORDER BY seq LIMIT $records" |
    python3 -c '
import sys, os
root = sys.argv[1]
for line in sys.stdin:
    chip, body = line.rstrip("\n").split("\t", 1)
    with open(os.path.join(root, chip), "w") as f:
        f.write(body)
' "$www"
  touch "$dir/www/.complete-$records"
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

start_server() {  # extra serve flags...; sets server_pid, waits until healthy
  "$bin" serve --listen "127.0.0.1:$bport" --ops-listen "127.0.0.1:$oport" --log off --cache "$cache" $preload \
    --threads 16 --db-pool 16 --db "host=127.0.0.1 port=$port user=keyline_backupdb dbname=postgres" \
    --db-password-file "$dir/role.pass" \
    --trust "$dir/sample.pem" --no-log "$@" >"$dir/server.out" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do curl -skf "$base/healthz" >/dev/null && return; sleep 0.2; done
  echo "bench_backupdb: server did not start: $(cat "$dir/server.out")" >&2
  exit 1
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

bport=$(free_port)
oport=$(free_port)
base="http://127.0.0.1:$bport"
start_server --plain-http

cat > "$dir/random.lua" <<LUA
-- Each request asks for a random one of the $records chip IDs.
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/v1/records/%020X", math.random(0, $records - 1)))
end
LUA

chip0=$(printf '%020X' 0)
curl -sf "http://127.0.0.1:$bport/v1/records/$chip0" | cmp -s - "$www/$chip0" ||
  { echo "bench_backupdb: server and nginx bodies differ" >&2; exit 1; }

run() {  # url -> "req/s p99_ms"
  local out rps p99
  out=$(wrk -t2 -c64 -d"${seconds}s" --latency -s "$dir/random.lua" "$1")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [ -z "$errors" ] || echo "bench_backupdb: $1: $errors" >&2
  echo "$rps $p99"
}

# Warm both (page cache, the server's record cache, nginx's open file cache), then measure.
wrk -t2 -c64 -d"${seconds}s" -s "$dir/random.lua" "http://127.0.0.1:$nport/" >/dev/null
wrk -t2 -c64 -d"${seconds}s" -s "$dir/random.lua" "http://127.0.0.1:$bport/" >/dev/null
read -r n_rps n_p99 < <(run "http://127.0.0.1:$nport/")
read -r b_rps b_p99 < <(run "http://127.0.0.1:$bport/")
hits=$(curl -s "http://127.0.0.1:$oport/metrics" | awk '/^keyline_backupdb_cache_hits_total/ {print $2}')
misses=$(curl -s "http://127.0.0.1:$oport/metrics" | awk '/^keyline_backupdb_cache_misses_total/ {print $2}')

# The same over HTTPS (server's own TLS vs nginx TLS), when asked for (KEYLINE_BENCH_HTTPS=1, default).
if [ "${KEYLINE_BENCH_HTTPS:-1}" = 1 ]; then
  stop_server
  base="https://127.0.0.1:$bport"
  start_server --tls-cert "$dir/tls.pem" --tls-key "$dir/tls.key" --station-ca "$dir/station-ca.pem"
  wrk -t2 -c64 -d"${seconds}s" -s "$dir/random.lua" "https://127.0.0.1:$nsport/" >/dev/null
  wrk -t2 -c64 -d"${seconds}s" -s "$dir/random.lua" "$base/" >/dev/null
  read -r ns_rps ns_p99 < <(run "https://127.0.0.1:$nsport/")
  read -r bs_rps bs_p99 < <(run "$base/")
fi
ratio=$(awk -v a="$b_rps" -v b="$n_rps" 'BEGIN {printf "%.2f", a / b}')
echo "backupdb GET /v1/records/{chip_id}: $records records, wrk 64 connections, ${seconds}s, $(nproc) cores"
printf '  nginx static files : %10.0f req/s  p99 %6.2f ms\n' "$n_rps" "$n_p99"
printf '  keyline-backupdb   : %10.0f req/s  p99 %6.2f ms  (cache hits %s, misses %s)\n' "$b_rps" "$b_p99" "$hits" "$misses"
verdict=$(awk -v r="$ratio" -v p="$b_p99" 'BEGIN {print (r >= 0.5 && p < 5) ? "goal met" : "goal NOT met"}')
echo "  ratio backupdb/nginx: $ratio (goal >= 0.5), p99 $b_p99 ms (goal < 5 ms): $verdict"
if [ -n "${bs_rps:-}" ]; then
  printf '  HTTPS nginx        : %10.0f req/s  p99 %6.2f ms\n' "$ns_rps" "$ns_p99"
  printf '  HTTPS backupdb     : %10.0f req/s  p99 %6.2f ms  (ratio %s)\n' "$bs_rps" "$bs_p99" \
    "$(awk -v a="$bs_rps" -v b="$ns_rps" 'BEGIN {printf "%.2f", a / b}')"
fi
