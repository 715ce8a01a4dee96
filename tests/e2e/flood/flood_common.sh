# Sourced by the flood tests (flood_test.sh, body_flood_test.sh): their processes stopped at exit, a fresh
# work directory with the fixture's certificates and record, and a database of their own on the pg fixture.
#   flood_setup WORKDIR DBNAME   sets OWNER (the owner's conninfo, its password in PGPASSWORD, never on a
#                                command line); PIDS collects what cleanup stops; flood_drop_db drops it
# Needs KEYLINE_TESTENV (the pg fixture) and FLOOD_FIXTURE (certificates, record).
PIDS=()
flood_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap flood_cleanup EXIT

flood_setup() {
  local work=$1 db=$2
  rm -rf "$work"
  mkdir -p "$work"
  "$FLOOD_FIXTURE" "$work"
  # The probe's trust: the service CA and the root above it (Python's ssl wants the whole chain).
  cat "$work/service_ca.pem" "$work/root.pem" >"$work/probe_ca.pem"
  local pg="$KEYLINE_TESTENV/pg"
  export PGPASSWORD
  PGPASSWORD=$(cat "$pg/password")
  FLOOD_OWNER_BASE="host=$(cat "$pg/host") port=$(cat "$pg/port") user=postgres connect_timeout=5"
  FLOOD_DB=$db
  psql "$FLOOD_OWNER_BASE dbname=postgres" -qc "CREATE DATABASE $db" >/dev/null
  OWNER="$FLOOD_OWNER_BASE dbname=$db"
}

# The test's database dropped (after its servers stopped).
flood_drop_db() {
  psql "$FLOOD_OWNER_BASE dbname=postgres" -qc "DROP DATABASE $FLOOD_DB" >/dev/null 2>&1 || true
}
