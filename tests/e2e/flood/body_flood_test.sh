#!/usr/bin/env bash
# The public DB, the real program on the fixture PostgreSQL cluster, under anonymous publish heads
# (tests/support/body_flood.py): 300 TLS connections from 8 addresses, no client certificate, each
# announcing a 256 KiB body and trickling it, for 12 s, while a station re-publishes and reads every
# 0.5 s. Every station publish and read must be answered 200/201, and the server must never buffer
# more than 8 MiB (docs/decisions.md, "Who may reserve the buffer budget").
#   body_flood_test.sh WORKDIR    needs LINE_BIN, KEYLINE_TESTENV, FLOOD_FIXTURE (as tests/e2e/flood)
set -euo pipefail

work=${1:?usage: body_flood_test.sh WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHIP=47905000000000000001
# shellcheck source=flood_common.sh
. "$here/flood_common.sh"
flood_setup "$work" "body_flood_$$"

"$LINE_BIN/keyline-backupdb" migrate --db "$OWNER" >/dev/null
out="$work/backupdb.out"
"$LINE_BIN/keyline-backupdb" serve --no-log --db "$OWNER" \
  --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 --tls-cert "$work/server.pem" --tls-key "$work/server.key" \
  --station-ca "$work/service_ca.pem" --trust "$work/root.pem" --log "$work/backupdb.log" >"$out" 2>&1 &
PIDS+=($!)
for ((i = 0; i < 100; i++)); do
  grep -q 'operations (metrics, healthz) on' "$out" && break
  kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$out"; echo "FAIL keyline-backupdb did not start"; exit 1; }
  sleep 0.1
done
ADDR=$(sed -n 's/.*: serving HTTPS on \(.*\)$/\1/p' "$out" | head -1)
OPS=$(sed -n 's|.*operations (metrics, healthz) on http://\(.*\)$|\1|p' "$out" | head -1)
code=$(curl -s -o "$work/publish.json" -w '%{http_code}' --cacert "$work/service_ca.pem" \
  --cert "$work/station.pem" --key "$work/station.key" -H 'Content-Type: application/json' \
  --data-binary @"$work/record.json" "https://$ADDR/v1/records")
[ "$code" = 201 ] || { cat "$work/publish.json"; echo "FAIL publish: $code"; exit 1; }

rc=0
python3 "$here/../../support/body_flood.py" --target "$ADDR" --ops "$OPS" --count 300 --sources 127.0.1.1-127.0.1.8 \
  --cl 262144 --seconds 12 --ca "$work/probe_ca.pem" --cert "$work/station.pem" --key "$work/station.key" \
  --record "$work/record.json" --read-path "/v1/records/$CHIP" --station-source 127.0.0.3 \
  --max-buffered $((8 * 1024 * 1024)) || rc=$?

flood_cleanup
PIDS=()
flood_drop_db
[ "$rc" -eq 0 ] || { echo "FAIL anonymous publish heads kept the station from being served"; exit 1; }
echo "PASS every station publish and read answered under 300 anonymous 256 KiB publish heads"
