#!/bin/bash
# A private pcscd for tests (docs/readers.md, "The test pcscd"): its own mount namespace binds
# DIR/run over /run/pcscd, so pcscd 1.9.9 (which always binds /run/pcscd/pcscd.comm) opens its
# socket at DIR/run/pcscd.comm and never meets the system's or another test's pcscd. Clients reach
# it through PCSCLITE_CSOCK_NAME.
#
#   pcscd.sh start DIR N   N readers of Debian's vpcd driver (one reader.conf entry opens two,
#                          "<name> 00 00" on port P and "<name> 00 01" on P+1; each entry loads
#                          its own copy of the driver, see below); writes
#                          DIR/env (PCSCLITE_CSOCK_NAME=...) and DIR/readers ("<reader name> <vpcd port>"
#                          a line), prints both. `keyline-device serve --vpcd 127.0.0.1:PORT` puts a
#                          card in the reader of that port.
#   pcscd.sh stop DIR      stops it (DIR/pcscd.pid).
# Exit 77 (ctest skip) only when a private pcscd cannot run here: not root, no unshare, no pcscd
# or vpcd driver. With the namespace another pcscd never holds the socket, so that is no reason.
set -u
DRIVER=/usr/lib/pcsc/drivers/serial/libifdvpcd.so
skip() { echo "SKIP: $*" >&2; exit 77; }
die() { echo "pcscd.sh: $*" >&2; [ -f "$DIR/pcscd.log" ] && tail -n 20 "$DIR/pcscd.log" >&2; exit 1; }

stop() {
  [ -f "$DIR/pcscd.pid" ] || return 0
  local pid
  pid=$(cat "$DIR/pcscd.pid")
  # Only the pcscd this script started: the pid file's process, and only while it is a pcscd.
  if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = pcscd ]; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$DIR/pcscd.pid"
}

# Free TCP port pairs below the ephemeral range (32768-60999): a port the kernel hands out can be
# taken as the local end of another test's outgoing connection before the vpcd driver binds it.
free_port_pairs() {
  python3 - "$1" <<'PY'
import random, socket, sys
want, got = int(sys.argv[1]), []
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
while len(got) < want:
    p = random.randrange(10000, 32000, 2)
    if p not in got and free(p) and free(p + 1):
        got.append(p)
print(" ".join(map(str, got)))
PY
}

# Writes the reader.conf entries for $1 entries on fresh ports, starts pcscd, waits for its readers.
# Sets `ports` and `names`; 1 when the readers did not all come up.
launch() {
  local entries=$1 i=0 port
  rm -rf "$DIR/conf.d" "$DIR/run" "$DIR/drivers"
  mkdir -p "$DIR/conf.d" "$DIR/run" "$DIR/drivers" /run/pcscd || die "cannot make $DIR"
  ports=$(free_port_pairs "$entries") || die "no free ports"
  for port in $ports; do
    # The vpcd driver keeps its sockets in a static array indexed by slot (0, 1), not by reader:
    # two entries sharing one loaded driver share those sockets, and a card on the second entry's
    # port shows in both entries' readers. pcscd loads a driver once per path, and the dynamic
    # loader once per file: a copy (not a link) per entry gives each entry its own.
    cp "$DRIVER" "$DIR/drivers/vpcd-$i.so" || die "cannot copy $DRIVER"
    cat >"$DIR/conf.d/vpcd-$i" <<CONF
FRIENDLYNAME "keyline vpcd $i"
DEVICENAME   /dev/null:$port
LIBPATH      $DIR/drivers/vpcd-$i.so
CHANNELID    $port
CONF
    i=$((i + 1))
  done
  # PCSCD_DEBUG=1: pcscd logs every call (DIR/pcscd.log), for a test being debugged.
  unshare -m sh -c 'mount --bind "$1" /run/pcscd && exec pcscd -f ${3:+-d} -c "$2"' sh "$DIR/run" "$DIR/conf.d" "${PCSCD_DEBUG:+1}" \
    >"$DIR/pcscd.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$DIR/pcscd.pid"
  local sock="$DIR/run/pcscd.comm"
  echo "PCSCLITE_CSOCK_NAME=$sock" >"$DIR/env"
  export PCSCLITE_CSOCK_NAME="$sock"
  names=""
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { grep -q "Operation not permitted" "$DIR/pcscd.log" &&
      skip "no mount namespace here: $(tail -n 2 "$DIR/pcscd.log" | tr '\n' ' ')"; return 1; }
    if [ -S "$sock" ]; then
      names=$(timeout 5 pcsc_scan -r 2>/dev/null | sed -n 's/^[0-9]\+: //p')
      [ "$(printf '%s\n' "$names" | grep -c .)" -ge $((entries * 2)) ] && return 0
    fi
    sleep 0.1
  done
  return 1
}

start() {
  local n=$1
  [ "$n" -ge 1 ] 2>/dev/null || die "N must be a positive number of readers"
  [ "$(id -u)" = 0 ] || skip "a private pcscd needs root (a mount namespace binds its socket directory)"
  command -v unshare >/dev/null || skip "unshare is missing (util-linux)"
  command -v pcscd >/dev/null || skip "pcscd is not installed (Debian package pcscd)"
  command -v pcsc_scan >/dev/null || skip "pcsc_scan is not installed (Debian package pcsc-tools)"
  [ -f "$DRIVER" ] || skip "vpcd driver missing (Debian package vsmartcard-vpcd)"
  stop
  local entries=$(((n + 1) / 2)) attempt
  # A port picked free can be taken by another test before the driver binds it; that entry's readers
  # then never come up, and a second pick is tried.
  for attempt in 1 2 3; do
    launch "$entries" && break
    stop
    [ "$attempt" -lt 3 ] || die "pcscd did not bring up $((entries * 2)) readers"
  done
  # "<FRIENDLYNAME> XX SS": entry i's slot 00 listens on its port, slot 01 on the next.
  : >"$DIR/readers"
  local count=0 i=0 port
  for port in $ports; do
    for slot in 0 1; do
      [ "$count" -lt "$n" ] || break
      local name
      name=$(printf '%s\n' "$names" | grep "^keyline vpcd $i [0-9A-F]\{2\} 0$slot\$" | head -n 1)
      [ -n "$name" ] || die "no reader for entry $i slot $slot in: $names"
      echo "$name $((port + slot))" >>"$DIR/readers"
      count=$((count + 1))
    done
    i=$((i + 1))
  done
  cat "$DIR/env" "$DIR/readers"
}

case "${1:-}" in
  start) [ $# -eq 3 ] || die "usage: pcscd.sh start DIR N"; DIR=$2; start "$3" ;;
  stop) [ $# -eq 2 ] || die "usage: pcscd.sh stop DIR"; DIR=$2; stop ;;
  *) echo "usage: pcscd.sh start DIR N | stop DIR" >&2; exit 2 ;;
esac
