# keyline-service on a line started by scripts/lib/line.sh (sourced after it): the demo and
# tests/e2e/service use these.
#   service_up                 database keyline_service, migrate, serve on the station's token (it holds
#                              the line's masters: version 1 (docs/service.md "Version 1 (legacy)") and
#                              any version `keys roll master` made (derivation v2);
#                              sets LINE_SERVICE_URL and LINE_SERVICE_DB
#   service_cli ARGS...        keyline-service with the token's module, label and PIN file
#   service_code_signing DIR   a P-256 key on the token (keyline-code-signing, `module keygen`, its usages
#                              read back: sign / verify only) and its certificate under the line's root,
#                              EKU codeSigning (DIR/cs.pem), through OpenSSL's PKCS#11 engine
# The server's TLS certificate is its own, service-tls.pem/.key, made by `keyline-station keys init` (and
# `keys server-cert --for service`) from the service CA, like the public DB's and the KPS's.

service_token_args() {
  printf '%s\n' --pkcs11-module "$(cat "$LINE_DIR/hsm/module")" --token-label "$(cat "$LINE_DIR/hsm/label")" \
    --pin-file "$LINE_DIR/hsm/user.pin"
}

service_cli() {
  local sub=$1
  shift
  if [ "$sub" = module ]; then
    local verb=$1
    shift
    mapfile -t tok < <(service_token_args)
    "$LINE_BIN/keyline-service" module "$verb" "${tok[@]}" "$@"
  else
    "$LINE_BIN/keyline-service" "$sub" "$@"
  fi
}

service_up() {
  local ci sport attempt spid tok
  ci=$LINE_PG_CONNINFO
  psql "$ci" -tAc "SELECT 1 FROM pg_database WHERE datname = 'keyline_service'" | grep -q 1 ||
    psql "$ci" -qc "CREATE DATABASE keyline_service" >/dev/null
  LINE_SERVICE_DB="${ci/dbname=postgres/dbname=keyline_service}"
  export LINE_SERVICE_DB
  export KEYLINE_SERVICE_DB=$LINE_SERVICE_DB  # it holds a password: never on argv (docs/operations.md)
  KEYLINE_SERVICE_DB="$LINE_SERVICE_DB" "$LINE_BIN/keyline-service" migrate >&2
  mapfile -t tok < <(service_token_args)
  for attempt in 1 2 3; do
    sport=$(line_free_port)
    KEYLINE_SERVICE_DB="$LINE_SERVICE_DB" "$LINE_BIN/keyline-service" serve "${tok[@]}" \
      --listen "127.0.0.1:$sport" --ops-listen 127.0.0.1:0 \
      --tls-cert "$LINE_DIR/pki/service-tls.pem" --tls-key "$LINE_DIR/pki/service-tls.key" \
      --public-db "$LINE_BACKUPDB_URL" --public-db-ca "$LINE_DIR/pki/tls-ca.pem" --trust "$LINE_DIR/pki/root.pem" \
      --log "$LINE_DIR/logs/service.log" >>"$LINE_DIR/logs/service.out" 2>&1 &
    spid=$!
    if line_wait_port 127.0.0.1 "$sport" 20 && kill -0 "$spid" 2>/dev/null; then
      LINE_PIDS+=("$spid")
      break
    fi
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    [ "$attempt" -lt 3 ] || { line_log "keyline-service did not start"; cat "$LINE_DIR/logs/service.out" >&2; return 1; }
  done
  LINE_SERVICE_URL="https://127.0.0.1:$sport"
  export LINE_SERVICE_URL
  line_log "keyline-service serving on $LINE_SERVICE_URL"
}

service_code_signing() {
  local dir=$1 module label pin uri
  line_code_signing_key "$dir" || return 1  # scripts/lib/line.sh: made by keyline-service, usages read back
  module=$(cat "$LINE_DIR/hsm/module")
  label=$(cat "$LINE_DIR/hsm/label")
  pin=$(cat "$LINE_DIR/hsm/user.pin")
  uri="pkcs11:token=$label;type=private"
  cat >"$dir/ext.cnf" <<CNF
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
  OPENSSL_CONF=/dev/null PKCS11_MODULE_PATH=$module openssl req -new -engine pkcs11 -keyform engine \
    -key "$uri;object=keyline-code-signing?pin-value=$pin" -subj "/O=keyline demo/CN=keyline code signing" \
    -out "$dir/cs.csr" >"$dir/csr.log" 2>&1 || return 1
  OPENSSL_CONF=/dev/null PKCS11_MODULE_PATH=$module openssl x509 -req -in "$dir/cs.csr" -engine pkcs11 \
    -CAkeyform engine -CAkey "$uri;object=keyline-root?pin-value=$pin" -CA "$LINE_DIR/pki/root.pem" \
    -CAcreateserial -CAserial "$dir/serial" -days 30 -sha256 -extfile "$dir/ext.cnf" -out "$dir/cs.pem" >"$dir/x509.log" 2>&1
}
