#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for tests and the demo: loopback only, a free port, its own socket
# dir, SCRAM passwords. PostgreSQL refuses to run as root, so as root the server runs as the
# "postgres" user (setpriv), with its data where that user can reach it.
#
#   scripts/pg.sh start DIR     initdb (first time) + start; writes DIR/{conninfo,host,port,password}
#   scripts/pg.sh stop DIR      fast shutdown (no error when not running)
#   scripts/pg.sh status DIR    exit 0 when running
#   scripts/pg.sh conninfo DIR  prints the superuser connection string
#   scripts/pg.sh start-replica PRIMARY_DIR REPLICA_DIR
#                               a hot standby of the running cluster in PRIMARY_DIR, by streaming
#                               replication (pg_basebackup -R, first time) + start; writes the same files
#                               as start into REPLICA_DIR (the primary's password: the roles are copied).
#                               Stopped, restarted and queried as any cluster: stop|status|conninfo REPLICA_DIR
# KEYLINE_PG_OPTS adds server settings at start, e.g. "-c shared_preload_libraries=pg_stat_statements"
# to see where a benchmark's database time goes.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|status|conninfo DIR | start-replica PRIMARY_DIR REPLICA_DIR" >&2; exit 2; }
bin=/usr/lib/postgresql/15/bin
[ -x "$bin/pg_ctl" ] || { echo "pg.sh: PostgreSQL 15 not installed (run scripts/setup.sh)" >&2; exit 4; }

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups --reset-env env PATH="$bin:/usr/bin:/bin" "$@"
  else
    "$@"
  fi
}

data_dir() {
  # The data dir is DIR/data unless the postgres user cannot reach DIR (e.g. a clone under /root);
  # then it lives under /var/tmp and DIR/data is a symlink to it.
  if [ -L "$dir/data" ] || [ -d "$dir/data" ]; then readlink -f "$dir/data"; return; fi
  mkdir -p "$dir/data"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$dir/data"
    chmod 700 "$dir/data"
    if ! as_pg test -w "$dir/data"; then
      rmdir "$dir/data"
      local alt
      alt=$(mktemp -d /var/tmp/keyline-pg.XXXXXX)
      chown postgres:postgres "$alt"
      chmod 700 "$alt"
      ln -s "$alt" "$dir/data"
    fi
  fi
  readlink -f "$dir/data"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() {
  local d
  [ -e "$dir/data" ] || return 1
  d=$(readlink -f "$dir/data")
  as_pg "$bin/pg_ctl" -D "$d" status >/dev/null 2>&1
}

launch() {
  # Starts the cluster in $d (sockets in $sock) on a free port; writes $dir/{port,host,conninfo}.
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$(( 10000 + RANDOM % 22000 ))  # below the ephemeral range, as line_free_port
    # A cluster started again (after a stop or a crash) keeps its port while it is free, so that
    # clients holding its conninfo reconnect to it.
    if [ "$attempt" -eq 1 ] && [ -f "$dir/port" ]; then port=$(cat "$dir/port"); fi
    port_free "$port" || continue
    # Tuned for a test/demo cluster; durability (fsync, synchronous_commit) stays ON: invariant 4
    # is only meaningful with durable commits.
    if as_pg "$bin/pg_ctl" -D "$d" -l "$d/server.log" -w -t 30 start -o \
        "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$sock -c max_connections=300 -c shared_buffers=128MB ${KEYLINE_PG_OPTS:-}" \
        >/dev/null 2>&1; then
      printf '%s\n' "$port" > "$dir/port"
      printf '127.0.0.1\n' > "$dir/host"
      umask 077
      printf 'host=127.0.0.1 port=%s user=postgres password=%s dbname=postgres connect_timeout=5\n' \
        "$port" "$(cat "$dir/password")" > "$dir/conninfo"
      echo "pg.sh: PostgreSQL 15 running on 127.0.0.1:$port (data $d)"
      exit 0
    fi
    echo "pg.sh: start on port $port failed (attempt $attempt), see $d/server.log" >&2
  done
  tail -20 "$d/server.log" >&2 || true
  exit 1
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    chmod 755 "$dir"
    d=$(data_dir)
    sock="$d/sock"
    if [ ! -f "$d/PG_VERSION" ]; then
      umask 077
      pw=$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 32)
      printf '%s\n' "$pw" > "$dir/password"
      pwfile=$(mktemp)
      printf '%s\n' "$pw" > "$pwfile"
      [ "$(id -u)" -eq 0 ] && chown postgres "$pwfile"
      as_pg "$bin/initdb" -D "$d" -U postgres --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { rm -f "$pwfile"; cat "$dir/initdb.log" >&2; exit 1; }
      rm -f "$pwfile"
      as_pg mkdir -p "$sock"
    fi
    if running; then
      echo "pg.sh: already running on port $(cat "$dir/port")"
      exit 0
    fi
    launch
    ;;
  start-replica)
    primary=$dir
    dir=${3:-}
    [ -n "$dir" ] || { echo "usage: $0 start-replica PRIMARY_DIR REPLICA_DIR" >&2; exit 2; }
    [ -f "$primary/conninfo" ] || { echo "pg.sh: no cluster in $primary (scripts/pg.sh start first)" >&2; exit 4; }
    mkdir -p "$dir"
    chmod 755 "$dir"
    d=$(data_dir)
    sock="$d/sock"
    if running; then
      echo "pg.sh: already running on port $(cat "$dir/port")"
      exit 0
    fi
    if [ ! -f "$d/PG_VERSION" ]; then
      umask 077
      cp "$primary/password" "$dir/password"
      # The password reaches pg_basebackup through a passfile, never argv; -R writes standby.signal
      # and a primary_conninfo naming that (temporary) passfile, replaced below by one holding the
      # password, as -R writes it for a password given on the connection. -X stream keeps the WAL
      # written during the copy, so the standby starts consistent and then streams.
      passfile=$(mktemp)
      printf '127.0.0.1:%s:*:postgres:%s\n' "$(cat "$primary/port")" "$(cat "$primary/password")" > "$passfile"
      [ "$(id -u)" -eq 0 ] && chown postgres "$passfile"
      as_pg env PGPASSFILE="$passfile" "$bin/pg_basebackup" -h 127.0.0.1 -p "$(cat "$primary/port")" -U postgres \
        -D "$d" -R -X stream -c fast >"$dir/basebackup.log" 2>&1 || { rm -f "$passfile"; cat "$dir/basebackup.log" >&2; exit 1; }
      rm -f "$passfile"
      printf "primary_conninfo = 'host=127.0.0.1 port=%s user=postgres password=%s application_name=%s'\\n" \
        "$(cat "$primary/port")" "$(cat "$primary/password")" "$(basename "$dir")" | as_pg tee -a "$d/postgresql.auto.conf" >/dev/null
      # The primary's log and socket lock files came with the copy; the standby keeps its own.
      as_pg rm -f "$d/server.log"
      as_pg rm -rf "$sock"
      as_pg mkdir -p "$sock"
    fi
    launch
    ;;
  stop)
    if running; then
      as_pg "$bin/pg_ctl" -D "$(readlink -f "$dir/data")" -m fast -w stop >/dev/null
      echo "pg.sh: stopped"
    fi
    ;;
  status)
    running
    ;;
  conninfo)
    cat "$dir/conninfo"
    ;;
  *)
    echo "usage: $0 start|stop|status|conninfo DIR | start-replica PRIMARY_DIR REPLICA_DIR" >&2
    exit 2
    ;;
esac
