#!/usr/bin/env bash
# The public DB and the KPS, real programs on the fixture PostgreSQL cluster, under attack:
#   flood_test.sh backupdb WORKDIR   200 slow-header + 200 silent + 200 slow-handshake connections for
#                                    20 s while a probe reads the published record every 200 ms
#   flood_test.sh kps WORKDIR        the same against the KPS, probing GET /healthz
#   flood_test.sh malformed WORKDIR  each server answers a malformed Content-Length with a problem
#                                    document and counts it on its operations listener; /metrics
#                                    is 404 on the public listener
# Needs LINE_BIN (the programs), KEYLINE_TESTENV (the pg fixture), FLOOD_FIXTURE (certificates, record).
set -euo pipefail

what=${1:?usage: flood_test.sh backupdb|kps|malformed WORKDIR}
work=${2:?usage: flood_test.sh backupdb|kps|malformed WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
FLOOD="$top/tests/support/flood.py"
CHIP=47905000000000000001
failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
# shellcheck source=flood_common.sh
. "$here/flood_common.sh"
flood_setup "$work" "flood_${what}_$$"

# start_server NAME LOGFILE PROGRAM ARGS...: runs it, waits for its two "... on ADDR" lines and sets
# ${NAME}_ADDR (public) and ${NAME}_OPS (operations) from them.
start_server() {
  local name=$1 out=$2
  shift 2
  "$@" >"$out" 2>&1 &
  PIDS+=($!)
  local i
  for ((i = 0; i < 100; i++)); do
    grep -q 'operations (metrics, healthz) on' "$out" && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$out"; echo "FAIL $name did not start"; exit 1; }
    sleep 0.1
  done
  printf -v "${name}_ADDR" '%s' "$(sed -n 's/.*: serving HTTPS on \(.*\)$/\1/p' "$out" | head -1)"
  printf -v "${name}_OPS" '%s' "$(sed -n 's|.*operations (metrics, healthz) on http://\(.*\)$|\1|p' "$out" | head -1)"
}

start_backupdb() {
  "$LINE_BIN/keyline-backupdb" migrate --db "$OWNER" >/dev/null
  start_server BDB "$work/backupdb.out" "$LINE_BIN/keyline-backupdb" serve --no-log --db "$OWNER" \
    --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 --tls-cert "$work/server.pem" --tls-key "$work/server.key" \
    --station-ca "$work/service_ca.pem" --trust "$work/root.pem" --log "$work/backupdb.log"
  local code
  code=$(curl -s -o "$work/publish.json" -w '%{http_code}' --cacert "$work/service_ca.pem" \
    --cert "$work/station.pem" --key "$work/station.key" -H 'Content-Type: application/json' \
    --data-binary @"$work/record.json" "https://$BDB_ADDR/v1/records")
  [ "$code" = 201 ] || { cat "$work/publish.json"; echo "FAIL publish: $code"; exit 1; }
}

start_kps() {
  "$LINE_BIN/keyline-kps" migrate --db "$OWNER" >/dev/null
  start_server KPS "$work/kps.out" "$LINE_BIN/keyline-kps" serve --db "$OWNER" \
    --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 --tls-cert "$work/server.pem" --tls-key "$work/server.key" \
    --trust "$work/root.pem" --allow '*:*:*' --log "$work/kps.log"
}

# flood TARGET PROBE_URL NAME STATUS: the acceptance run of docs/decisions.md ("The servers' own
# acceptor"). A probe counts only when it gets STATUS (a 404 or a 429 is not the record being read).
flood() {
  local target=$1 url=$2 name=$3 status=$4
  if python3 "$FLOOD" --target "$target" --tls --slow-header 200 --silent 200 --slow-handshake 200 \
      --seconds 20 --sources 127.0.0.10-127.0.0.40 --probe "$url" --probe-ca "$work/probe_ca.pem" \
      --probe-every 0.2 --p99-max-ms 100 --probe-source 127.0.0.2 --expect-status "$status" \
      >"$work/flood-$name.out" 2>&1; then
    pass "$name: every probe answered $status, p99 within 100 ms under 600 hostile connections"
  else
    fail "$name: flood.py failed"
  fi
  cat "$work/flood-$name.out"
}

# malformed ADDR OPS METRIC NAME LOG: a duplicate Content-Length over TLS gets a 400 problem
# document, the server logs it in LOG, and the operations listener counts it by status.
malformed() {
  local addr=$1 ops=$2 metric=$3 name=$4 log=$5
  python3 - "$addr" >"$work/malformed-$name.out" 2>&1 <<'PY' || true
import socket, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw) as s:
    s.sendall(b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 12\r\nContent-Length: 13\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    print(data.decode(errors="replace"))
PY
  if head -1 "$work/malformed-$name.out" | grep -q '^HTTP/1.1 400' &&
      grep -qi '^content-type: application/problem+json' "$work/malformed-$name.out"; then
    pass "$name: malformed Content-Length answered 400 with a problem document"
  else
    fail "$name: malformed Content-Length"; cat "$work/malformed-$name.out"
  fi
  # ... and logs it: one event line in the server's --log (written by its own thread, so wait a little).
  local i
  for ((i = 0; i < 20; i++)); do
    grep -q '"event":"malformed"' "$log" && break
    sleep 0.1
  done
  if grep -q '"event":"malformed"' "$log"; then
    pass "$name: the malformed request is logged (\"event\":\"malformed\" in $(basename "$log"))"
  else
    fail "$name: no \"event\":\"malformed\" line in $log"; tail -5 "$log" || true
  fi
  local m
  m=$(curl -s "http://$ops/metrics")
  if grep -q "^${metric}{status=\"400\"} [1-9]" <<<"$m"; then
    pass "$name: the operations listener counts it (${metric})"
  else
    fail "$name: ${metric}{status=\"400\"} not counted"; grep malformed <<<"$m" || true
  fi
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/service_ca.pem" "https://$addr/metrics")
  [ "$code" = 404 ] && pass "$name: /metrics is 404 on the public listener" || fail "$name: public /metrics is $code"
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://$ops/healthz")
  [ "$code" = 200 ] && pass "$name: /healthz on the operations listener" || fail "$name: ops /healthz is $code"
}

case "$what" in
  backupdb)
    start_backupdb
    flood "$BDB_ADDR" "https://$BDB_ADDR/v1/records/$CHIP" backupdb 200
    ;;
  kps)
    start_kps
    flood "$KPS_ADDR" "https://$KPS_ADDR/healthz" kps 200
    ;;
  malformed)
    start_backupdb
    start_kps
    malformed "$BDB_ADDR" "$BDB_OPS" keyline_backupdb_malformed_requests_total backupdb "$work/backupdb.log"
    malformed "$KPS_ADDR" "$KPS_OPS" keyline_kps_malformed_requests_total kps "$work/kps.log"
    # A password on the KPS's command line is refused with exit 2 and a reason (docs/operations.md).
    rc=0
    "$LINE_BIN/keyline-kps" migrate --db "$OWNER password=x" >"$work/argv-pw.out" 2>&1 || rc=$?
    if [ "$rc" = 2 ] && grep -q -- '--db holds a password' "$work/argv-pw.out"; then
      pass "kps: a password in --db on the command line is refused"
    else
      fail "kps: --db with a password: exit $rc"; cat "$work/argv-pw.out"
    fi
    ;;
  *) echo "usage: flood_test.sh backupdb|kps|malformed WORKDIR" >&2; exit 2 ;;
esac

flood_cleanup
PIDS=()
flood_drop_db
[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all passed"
