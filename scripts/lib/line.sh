# shellcheck shell=bash
# A whole line on one machine, for the demo and the end-to-end tests: a private PostgreSQL cluster,
# a SoftHSM2 token, keys, the public DB server and a fleet of emulated devices. Source this file, then:
#   line_up DIR N [TAC]   start everything under DIR with N devices (ports in LINE_DEVICES)
#   line_personalize      personalize every device of the fleet (one station process)
#   line_down             stop every process line_up started (also called from an EXIT trap)
# LINE_CHANNEL=scp11a before line_up: the chips get a vendor identity (keyline-device vendor-init, make
# --vendor) and the station checks them (KEYLINE_CHIP_VENDORS) and personalizes over SCP11a; default
# plain (chips without a vendor). LINE_KEY_SOURCE (generate, pool, device) sets KEYLINE_KEY_SOURCE.
# LINE_ROOT=ceremony before line_up: the root on a root token of its own (DIR/root-hsm, its own
# SOFTHSM2_CONF, opened only by keyline-ceremony with DIR/ceremony), the station under it (keys init
# --offline-root, the ceremony signs its Device CA, station and service CA CSRs, keys install-cert);
# line_ceremony ARGS runs keyline-ceremony there. Default (station): `keys init`, the root on the station's token.
# Variables set by line_up: LINE_DIR, LINE_BIN, LINE_BACKUPDB_URL, LINE_DEVICES (array of HOST:PORT),
# LINE_DEVICE_DIRS (array), LINE_PG_CONNINFO, LINE_STATION_ISSUERS (who may publish: the public DB's
# --station-ca), with LINE_ROOT=ceremony LINE_ROOT_HSM and LINE_CEREMONY_DIR, plus the KEYLINE_* environment
# the programs read.

LINE_PIDS=()

line_log() { printf '%s\n' "line: $*" >&2; }

line_wait_port() {  # host port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

line_free_port() {
  local p
  while :; do
    # Below Linux's ephemeral range (32768-60999 by default): a port there can be taken as the local
    # end of some outgoing connection between this probe and the server's bind.
    p=$(( 10000 + RANDOM % 22000 ))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

# keyline-ceremony on the root token: its own SOFTHSM2_CONF, never the station's (docs/ceremony.md).
line_ceremony() {
  SOFTHSM2_CONF="$LINE_ROOT_HSM/softhsm2.conf" "$LINE_BIN/keyline-ceremony" --dir "$LINE_CEREMONY_DIR" \
    --hsm-module "$(cat "$LINE_ROOT_HSM/module")" --token "$(cat "$LINE_ROOT_HSM/label")" \
    --pin-file "$LINE_ROOT_HSM/user.pin" "$@"
}

# The station's keys under the offline root: its CSRs signed in a ceremony, then installed.
line_keys_ceremony() {
  local top=$1 out=$LINE_DIR/ceremony-out
  "$top/scripts/hsm.sh" init "$LINE_ROOT_HSM" keyline-root-token >&2 || return 1
  line_ceremony init-root --subject-cn "keyline demo Root" --organization "keyline demo manufacturer" --days 7300 || return 1
  "$LINE_BIN/keyline-station" keys init --offline-root || return 1
  mkdir -p "$out"
  local csr
  for csr in device-ca:device-ca station:station service-ca:service-ca; do
    line_ceremony sign --csr "$LINE_DIR/pki/${csr%%:*}.csr" --profile "${csr#*:}" --out "$out/${csr%%:*}.pem" || return 1
  done
  "$LINE_BIN/keyline-station" keys install-cert --root "$LINE_CEREMONY_DIR/root.pem" --cert "$out/device-ca.pem" \
    --cert "$out/station.pem" --cert "$out/service-ca.pem"
}

# line_code_signing_key DIR: the code-signing key (keyline-code-signing, P-256, id C5C5) made on the
# station's token by `keyline-service module keygen`, whose template names every usage attribute, then
# read back with pkcs11-tool: the private half must allow exactly sign, the public half exactly verify
# (issue 12; `pkcs11-tool --keypairgen --usage-sign` left SoftHSM's defaults on: decrypt, unwrap,
# encrypt, wrap). Log in DIR/keygen.log; returns 1, saying why on stderr, otherwise.
line_code_signing_key() {
  local dir=$1 module label pin usages
  mkdir -p "$dir"
  module=$(cat "$LINE_DIR/hsm/module")
  label=$(cat "$LINE_DIR/hsm/label")
  pin=$(cat "$LINE_DIR/hsm/user.pin")
  "$LINE_BIN/keyline-service" module keygen --pkcs11-module "$module" --token-label "$label" \
    --pin-file "$LINE_DIR/hsm/user.pin" >"$dir/keygen.log" 2>&1 || { cat "$dir/keygen.log" >&2; return 1; }
  # pkcs11-tool lists every object (its --label does not filter --list-objects): keep this label's.
  usages=$(pkcs11-tool --module "$module" --token-label "$label" --login --pin "$pin" --list-objects 2>/dev/null |
    awk '/^[^ ]/ {kind = $1; name = ""} /^  label:/ {sub(/^  label: */, ""); name = $0}
         /^  Usage:/ && name == "keyline-code-signing" {sub(/^  Usage: */, ""); print kind ": " $0}' | sort |
    paste -sd';' -)
  echo "usages read back: $usages" >>"$dir/keygen.log"
  [ "$usages" = "Private: sign;Public: verify" ] ||
    { line_log "keyline-code-signing allows $usages, want exactly Private: sign;Public: verify"; return 1; }
}

# LINE_ROOT=ceremony: a code-signing key on the station's token (keyline-code-signing) and its certificate
# from the ceremony (profile code-signing), DIR/cs.pem: what service_code_signing makes with the root on the
# station's token.
line_code_signing_ceremony() {
  local dir=$1 module label pin
  line_code_signing_key "$dir" || return 1
  module=$(cat "$LINE_DIR/hsm/module")
  label=$(cat "$LINE_DIR/hsm/label")
  pin=$(cat "$LINE_DIR/hsm/user.pin")
  OPENSSL_CONF=/dev/null PKCS11_MODULE_PATH=$module openssl req -new -engine pkcs11 -keyform engine \
    -key "pkcs11:token=$label;type=private;object=keyline-code-signing?pin-value=$pin" \
    -subj "/O=keyline demo/CN=keyline code signing" -out "$dir/cs.csr" >"$dir/csr.log" 2>&1 || return 1
  line_ceremony sign --csr "$dir/cs.csr" --profile code-signing --days 30 --out "$dir/cs.pem" >"$dir/sign.log" 2>&1
}

line_up() {
  local dir=$1 n=$2 tac=${3:-35780502}
  local top
  top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  LINE_DIR=$(mkdir -p "$dir" && cd "$dir" && pwd)
  LINE_BIN=${LINE_BIN:-$top/build/bin}
  mkdir -p "$LINE_DIR/logs"

  "$top/scripts/pg.sh" start "$LINE_DIR/pg" >&2
  LINE_PG_STARTED=1
  "$top/scripts/hsm.sh" init "$LINE_DIR/hsm" >&2
  export SOFTHSM2_CONF="$LINE_DIR/hsm/softhsm2.conf"
  export KEYLINE_HSM_PIN_FILE="$LINE_DIR/hsm/user.pin"
  export KEYLINE_PKI_DIR="$LINE_DIR/pki"
  # A --channel flag wins over this.
  export KEYLINE_CHANNEL=${LINE_CHANNEL:-${KEYLINE_CHANNEL:-plain}}
  [ -z "${LINE_KEY_SOURCE:-}" ] || export KEYLINE_KEY_SOURCE=$LINE_KEY_SOURCE

  local ci port
  ci=$(cat "$LINE_DIR/pg/conninfo")
  port=$(cat "$LINE_DIR/pg/port")
  LINE_PG_CONNINFO=$ci
  for db in keyline_station keyline_backupdb; do
    psql "$ci" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
      psql "$ci" -qc "CREATE DATABASE $db" >/dev/null
  done
  export KEYLINE_STATION_DB="${ci/dbname=postgres/dbname=keyline_station}"

  LINE_ROOT_HSM=$LINE_DIR/root-hsm LINE_CEREMONY_DIR=$LINE_DIR/ceremony
  if [ "${LINE_ROOT:-station}" = ceremony ]; then
    if [ ! -f "$LINE_DIR/pki/root.pem" ]; then
      line_keys_ceremony "$top" >"$LINE_DIR/logs/keys-init.log" 2>&1 ||
        { line_log "the ceremony failed"; cat "$LINE_DIR/logs/keys-init.log" >&2; return 1; }
      line_log "root on its own token ($LINE_ROOT_HSM), station keys certified in a ceremony (see $LINE_DIR/logs/keys-init.log)"
    fi
    # The station's certificate is the root's (profile station); the service CA stays accepted as today.
    LINE_STATION_ISSUERS=$LINE_DIR/station-issuers.pem
    cat "$LINE_DIR/pki/root.pem" "$LINE_DIR/pki/service-ca.pem" >"$LINE_STATION_ISSUERS"
  else
    unset LINE_ROOT_HSM LINE_CEREMONY_DIR
    if [ ! -f "$LINE_DIR/pki/root.pem" ]; then
      "$LINE_BIN/keyline-station" keys init >"$LINE_DIR/logs/keys-init.log"
      line_log "keys created on the SoftHSM token (see $LINE_DIR/logs/keys-init.log)"
    fi
    LINE_STATION_ISSUERS=$LINE_DIR/pki/service-ca.pem
  fi

  # The public DB: migrate as owner, serve as the restricted role.
  if [ ! -f "$LINE_DIR/backupdb.pass" ]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$LINE_DIR/backupdb.pass")
  fi
  # Connection strings with a password go through the environment, never argv (docs/operations.md).
  KEYLINE_BACKUPDB_ROLE_PASSWORD_FILE="$LINE_DIR/backupdb.pass" \
    KEYLINE_BACKUPDB_DB="${ci/dbname=postgres/dbname=keyline_backupdb}" "$LINE_BIN/keyline-backupdb" migrate >&2
  # The public DB's transparency log key (docs/transparency.md, "The public DB's log") on a token of
  # its own: the OpenSSL PKCS#11 engine the station's TLS key goes through cannot list the keys of a
  # token that also holds an Ed25519 key. serve and `keyline-backupdb log key` take it from these.
  "$top/scripts/hsm.sh" init "$LINE_DIR/hsm-log" keyline-log >&2
  export KEYLINE_BACKUPDB_LOG_TOKEN_MODULE KEYLINE_BACKUPDB_LOG_TOKEN_LABEL=keyline-log
  KEYLINE_BACKUPDB_LOG_TOKEN_MODULE=$(cat "$LINE_DIR/hsm-log/module")
  export KEYLINE_BACKUPDB_LOG_TOKEN_PIN_FILE="$LINE_DIR/hsm-log/user.pin"
  export LINE_LOG_SOFTHSM2_CONF="$LINE_DIR/hsm-log/softhsm2.conf"
  [ -s "$LINE_DIR/log.vkey" ] || SOFTHSM2_CONF=$LINE_LOG_SOFTHSM2_CONF "$LINE_BIN/keyline-backupdb" log init >"$LINE_DIR/log.vkey"
  export LINE_LOG_KEY_FILE="$LINE_DIR/log.vkey"
  local bport attempt
  for attempt in 1 2 3; do
    # A free port can be taken between the probe and the bind: then try another one.
    bport=$(line_free_port)
    KEYLINE_BACKUPDB_DB="host=127.0.0.1 port=$port dbname=keyline_backupdb user=keyline_backupdb password=$(cat "$LINE_DIR/backupdb.pass")" \
      SOFTHSM2_CONF=$LINE_LOG_SOFTHSM2_CONF "$LINE_BIN/keyline-backupdb" serve --listen "127.0.0.1:$bport" --ops-listen 127.0.0.1:0 \
      --tls-cert "$LINE_DIR/pki/backupdb-tls.pem" --tls-key "$LINE_DIR/pki/backupdb-tls.key" \
      --station-ca "$LINE_STATION_ISSUERS" --trust "$LINE_DIR/pki/root.pem" \
      --log "$LINE_DIR/logs/backupdb.log" >>"$LINE_DIR/logs/backupdb.out" 2>&1 &
    local bpid=$!
    if line_wait_port 127.0.0.1 "$bport" 20 && kill -0 "$bpid" 2>/dev/null; then
      LINE_PIDS+=("$bpid")
      break
    fi
    kill "$bpid" 2>/dev/null || true
    wait "$bpid" 2>/dev/null || true
    [ "$attempt" -lt 3 ] || { line_log "public DB did not start"; cat "$LINE_DIR/logs/backupdb.out" >&2; return 1; }
  done
  LINE_BACKUPDB_URL="https://127.0.0.1:$bport"
  export KEYLINE_BACKUPDB_URL=$LINE_BACKUPDB_URL
  line_log "public DB serving on $LINE_BACKUPDB_URL"

  # IMEIs for the devices (and a few spare).
  "$LINE_BIN/keyline-station" pool generate --tac "$tac" --count $((n + 4)) >&2

  # Chip fab and the fleet server.
  rm -rf "$LINE_DIR/fleet"
  local make_flags=()
  if [ "$KEYLINE_CHANNEL" = scp11a ]; then
    [ -f "$LINE_DIR/vendor/vendor.crt" ] || "$LINE_BIN/keyline-device" vendor-init "$LINE_DIR/vendor" >"$LINE_DIR/logs/vendor.log"
    make_flags=(--vendor "$LINE_DIR/vendor")
    export KEYLINE_CHIP_VENDORS="$LINE_DIR/vendor/vendor.crt"
  fi
  "$LINE_BIN/keyline-device" make --dir "$LINE_DIR/fleet" --count "$n" --rom-ca "$LINE_DIR/pki/root.pem" \
    "${make_flags[@]}" >"$LINE_DIR/logs/make.log"
  : >"$LINE_DIR/logs/fleet.out"
  # Port 0: every device gets its own ephemeral port (printed on its "listening" line), so no range can
  # collide with another test's servers.
  "$LINE_BIN/keyline-device" serve --fleet "$LINE_DIR/fleet" --listen "127.0.0.1:0" ${LINE_DEVICE_FLAGS:-} \
    >"$LINE_DIR/logs/fleet.out" 2>"$LINE_DIR/logs/fleet.log" &
  LINE_PIDS+=($!)
  local i
  for ((i = 0; i < 100; i++)); do
    [ "$(grep -c '^listening' "$LINE_DIR/logs/fleet.out")" -ge "$n" ] && break
    sleep 0.1
  done
  LINE_DEVICES=()
  LINE_DEVICE_DIRS=()
  while read -r _ addr _ ddir; do
    LINE_DEVICES+=("$addr")
    LINE_DEVICE_DIRS+=("$ddir")
  done < <(grep '^listening' "$LINE_DIR/logs/fleet.out")
  [ "${#LINE_DEVICES[@]}" -eq "$n" ] || { line_log "fleet did not start"; cat "$LINE_DIR/logs/fleet.log" >&2; return 1; }
  line_log "$n emulated devices listening (first at ${LINE_DEVICES[0]})"
}

line_personalize() {
  local args=()
  local d
  for d in "${LINE_DEVICES[@]}"; do args+=(--device "$d"); done
  "$LINE_BIN/keyline-station" personalize --json "${args[@]}"
}

line_down() {
  local p
  for p in "${LINE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${LINE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  LINE_PIDS=()
  if [ -n "${LINE_PG_STARTED:-}" ]; then
    local top
    top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    "$top/scripts/pg.sh" stop "$LINE_DIR/pg" >/dev/null 2>&1 || true
    LINE_PG_STARTED=
  fi
}

# --- helpers for the line-at-scale tests (issue #7) ---------------------------------------------
#   line_fleet_file FILE     the fleet's "listening HOST:PORT CHIPID DIR" lines (keyline-station run --fleet)
#   line_backupdb_stop       stop the public DB server (the line must keep going: records wait in the outbox)
#   line_backupdb_start      start it again on the same address
#   line_station_sql SQL / line_public_sql SQL   one query, unaligned tuples only
line_fleet_file() { grep '^listening' "$LINE_DIR/logs/fleet.out" >"$1"; }

line_backupdb_pid() {
  local port=${LINE_BACKUPDB_URL##*:}
  pgrep -f "keyline-backupdb serve --listen 127.0.0.1:$port " | head -1
}

line_backupdb_stop() {
  local pid
  pid=$(line_backupdb_pid)
  [ -n "$pid" ] || return 0
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  line_log "public DB server stopped"
}

line_backupdb_start() {
  local port=${LINE_BACKUPDB_URL##*:} pgport
  pgport=$(cat "$LINE_DIR/pg/port")
  KEYLINE_BACKUPDB_DB="host=127.0.0.1 port=$pgport dbname=keyline_backupdb user=keyline_backupdb password=$(cat "$LINE_DIR/backupdb.pass")" \
    SOFTHSM2_CONF=$LINE_LOG_SOFTHSM2_CONF "$LINE_BIN/keyline-backupdb" serve --listen "127.0.0.1:$port" --ops-listen 127.0.0.1:0 \
    --tls-cert "$LINE_DIR/pki/backupdb-tls.pem" --tls-key "$LINE_DIR/pki/backupdb-tls.key" \
    --station-ca "$LINE_STATION_ISSUERS" --trust "$LINE_DIR/pki/root.pem" \
    --log "$LINE_DIR/logs/backupdb.log" >>"$LINE_DIR/logs/backupdb.out" 2>&1 &
  LINE_PIDS+=($!)
  line_wait_port 127.0.0.1 "$port" 20 || { line_log "public DB did not restart"; return 1; }
  line_log "public DB server started again on $LINE_BACKUPDB_URL"
}

line_station_sql() { psql "$KEYLINE_STATION_DB" -tAc "$1"; }
line_public_sql() { psql "${LINE_PG_CONNINFO/dbname=postgres/dbname=keyline_backupdb}" -tAc "$1"; }

# --- the key provisioning server (docs/kps.md) ----------------------------------------------------
#   line_kps_up [POLICY_FILE | --allow SRC:TGT:LABELGLOB ...] [SERVE ARGS...]   migrate a keyline_kps
#     database, create the answer-signing key on the line's token (LINE_KPS_KEY: its public key, the
#     agents' --kps-key) and start keyline-kps on a free port with the line's KPS TLS certificate and the
#     line's public DB as the directory of transport certificates; sets LINE_KPS_URL, adds the pid to LINE_PIDS.
#   line_kps_sql SQL   one query on the KPS database, unaligned tuples only
line_kps_up() {
  local ci kport attempt kpid policy_args=()
  ci=$LINE_PG_CONNINFO
  if [ $# -ge 1 ] && [ -f "$1" ]; then policy_args=(--policy "$1"); shift; fi
  policy_args+=("$@")
  psql "$ci" -tAc "SELECT 1 FROM pg_database WHERE datname = 'keyline_kps'" | grep -q 1 ||
    psql "$ci" -qc "CREATE DATABASE keyline_kps" >/dev/null
  LINE_KPS_DB="${ci/dbname=postgres/dbname=keyline_kps}"
  KEYLINE_KPS_DB="$LINE_KPS_DB" "$LINE_BIN/keyline-kps" migrate >&2
  local sign=(--sign-module "$(cat "$LINE_DIR/hsm/module")" --sign-token-label "$(cat "$LINE_DIR/hsm/label")"
              --sign-key-label keyline-kps-sign --sign-pin-file "$LINE_DIR/hsm/user.pin")
  LINE_KPS_KEY="$LINE_DIR/pki/kps-sign.pub.pem"
  export LINE_KPS_KEY
  "$LINE_BIN/keyline-kps" sign-key init "${sign[@]}" --out "$LINE_KPS_KEY" >&2 || return 1
  for attempt in 1 2 3; do
    kport=$(line_free_port)
    KEYLINE_KPS_DB="$LINE_KPS_DB" "$LINE_BIN/keyline-kps" serve --listen "127.0.0.1:$kport" --ops-listen 127.0.0.1:0 \
      --tls-cert "$LINE_DIR/pki/kps-tls.pem" --tls-key "$LINE_DIR/pki/kps-tls.key" \
      --trust "$LINE_DIR/pki/root.pem" "${policy_args[@]}" "${sign[@]}" \
      --backupdb "$LINE_BACKUPDB_URL" --backupdb-ca "$LINE_DIR/pki/tls-ca.pem" \
      --log "$LINE_DIR/logs/kps.log" >>"$LINE_DIR/logs/kps.out" 2>&1 &
    kpid=$!
    if line_wait_port 127.0.0.1 "$kport" 20 && kill -0 "$kpid" 2>/dev/null; then
      LINE_PIDS+=("$kpid")
      break
    fi
    kill "$kpid" 2>/dev/null || true
    wait "$kpid" 2>/dev/null || true
    [ "$attempt" -lt 3 ] || { line_log "KPS did not start"; cat "$LINE_DIR/logs/kps.out" >&2; return 1; }
  done
  LINE_KPS_URL="https://127.0.0.1:$kport"
  export LINE_KPS_URL
  line_log "KPS serving on $LINE_KPS_URL"
}

line_kps_sql() { psql "$LINE_KPS_DB" -tAc "$1"; }
