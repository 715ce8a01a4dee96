# shellcheck shell=bash
# The test's own pcscd (tests/support/pcscd.sh: a private mount namespace, N vpcd readers), as shell
# variables for the PC/SC tests (integration and end to end). Source it, then:
#   pcsc_up DIR N   start it; sets PCSC_READERS (reader names) and PCSC_PORTS (the vpcd port of each, for
#                   `keyline-device serve --vpcd 127.0.0.1:PORT`) and exports PCSCLITE_CSOCK_NAME.
#                   Returns 77 when a private pcscd cannot run here (pcscd.sh says why).
#   pcsc_down       stop it (the caller's EXIT trap calls it)
PCSC_DIR=
PCSC_READERS=()
PCSC_PORTS=()
pcsc_script=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/pcscd.sh

pcsc_up() {
  local rc=0 name port
  PCSC_DIR=$(mkdir -p "$1" && cd "$1" && pwd)
  bash "$pcsc_script" start "$PCSC_DIR" "$2" >"$PCSC_DIR/start.out" || rc=$?
  cat "$PCSC_DIR/start.out"
  [ "$rc" -eq 0 ] || { PCSC_DIR_STARTED=; return "$rc"; }
  PCSC_DIR_STARTED=1
  export "$(cat "$PCSC_DIR/env")"
  PCSC_READERS=()
  PCSC_PORTS=()
  while read -r line; do
    port=${line##* }
    name=${line% *}
    PCSC_READERS+=("$name")
    PCSC_PORTS+=("$port")
  done <"$PCSC_DIR/readers"
}

pcsc_down() {
  [ -n "${PCSC_DIR_STARTED:-}" ] || return 0
  bash "$pcsc_script" stop "$PCSC_DIR"
  PCSC_DIR_STARTED=
}
