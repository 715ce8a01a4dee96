# shellcheck shell=bash
# Shared by kps_transfer_test.sh and scripts/bench_kps.sh: a keyline-kps on a line (scripts/lib/line.sh)
# with its answer-signing key on the line's SoftHSM token and the transport certificates from the
# line's public DB, on one fixed port so it can be stopped and started again (a restart, a clock jump).
#   kps_init POLICY_FILE         migrate, create the signing key (KPS_KEY = its public key), pick a port
#   kps_start [SERVE ARGS...]    start (e.g. --clock-offset-s 10800); sets KPS_PID, KPS_URL
#   kps_stop                     SIGTERM and wait
#   kps_agent_cmd VERB IDX ...   runs keyline-device kps VERB for device IDX against the KPS
#   kps_agent_exec VERB IDX ...  the same by exec, for `kps_agent_exec agent IDX ... &` (so $! is the agent)
#   kps_sql SQL                  one query on the KPS database

kps_init() {
  KPS_POLICY=$1
  local ci=$LINE_PG_CONNINFO
  psql "$ci" -tAc "SELECT 1 FROM pg_database WHERE datname = 'keyline_kps'" | grep -q 1 ||
    psql "$ci" -qc "CREATE DATABASE keyline_kps" >/dev/null
  KPS_DB="${ci/dbname=postgres/dbname=keyline_kps}"
  KEYLINE_KPS_DB="$KPS_DB" "$LINE_BIN/keyline-kps" migrate >&2
  KPS_SIGN_ARGS=(--sign-module "$(cat "$LINE_DIR/hsm/module")" --sign-token-label "$(cat "$LINE_DIR/hsm/label")"
                 --sign-key-label keyline-kps-sign --sign-pin-file "$LINE_DIR/hsm/user.pin")
  KPS_KEY="$LINE_DIR/pki/kps-sign.pub.pem"
  "$LINE_BIN/keyline-kps" sign-key init "${KPS_SIGN_ARGS[@]}" --out "$KPS_KEY" >&2
  KPS_PORT=$(line_free_port)
  KPS_URL="https://127.0.0.1:$KPS_PORT"
  KPS_CA="$LINE_DIR/pki/tls-ca.pem"
}

kps_start() {
  KEYLINE_KPS_DB="$KPS_DB" "$LINE_BIN/keyline-kps" serve --listen "127.0.0.1:$KPS_PORT" --ops-listen 127.0.0.1:0 \
    --tls-cert "$LINE_DIR/pki/kps-tls.pem" --tls-key "$LINE_DIR/pki/kps-tls.key" --trust "$LINE_DIR/pki/root.pem" \
    --policy "$KPS_POLICY" --backupdb "$LINE_BACKUPDB_URL" --backupdb-ca "$KPS_CA" "${KPS_SIGN_ARGS[@]}" \
    --log "${KPS_LOG:-$LINE_DIR/logs/kps.log}" "$@" >>"$LINE_DIR/logs/kps.out" 2>&1 &
  KPS_PID=$!
  LINE_PIDS+=("$KPS_PID")
  line_wait_port 127.0.0.1 "$KPS_PORT" 20 && kill -0 "$KPS_PID" 2>/dev/null ||
    { line_log "KPS did not start"; tail -n 20 "$LINE_DIR/logs/kps.out" >&2; return 1; }
}

kps_stop() {
  kill "$KPS_PID" 2>/dev/null || true
  wait "$KPS_PID" 2>/dev/null || true
}

kps_agent_cmd() {
  local verb=$1 idx=$2
  shift 2
  "$LINE_BIN/keyline-device" kps "$verb" --dir "${LINE_DEVICE_DIRS[$idx]}" --kps "${KPS_AGENT_URL:-$KPS_URL}" \
    --ca "$KPS_CA" --kps-key "$KPS_KEY" "$@"
}

kps_agent_exec() {
  local verb=$1 idx=$2
  shift 2
  exec "$LINE_BIN/keyline-device" kps "$verb" --dir "${LINE_DEVICE_DIRS[$idx]}" --kps "${KPS_AGENT_URL:-$KPS_URL}" \
    --ca "$KPS_CA" --kps-key "$KPS_KEY" "$@"
}

kps_sql() { psql "$KPS_DB" -tAc "$1"; }
