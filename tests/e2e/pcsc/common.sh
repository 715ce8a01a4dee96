# shellcheck shell=bash
# Shared by the PC/SC end-to-end tests: a whole line (tests/e2e/line/common.sh) whose devices are cards in
# the vpcd readers of a private pcscd (tests/support/pcscd_env.sh) instead of TCP fixtures.
#   pcsc_line_up DIR N   line_up with N devices, the TCP fleet stopped, a private pcscd with N readers;
#                        exits 77 (ctest: skipped, and says why) when a private pcscd cannot run here
#   card_in I [FLAGS]    `keyline-device serve --vpcd` of device I into reader I (the card put in)
#   card_out I           kill -9 of that process (the card pulled out)
#   wait_card_state I present|absent   until pcscd sees it (10 s at most)
here_pcsc=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../line/common.sh
source "$here_pcsc/../line/common.sh"
# shellcheck source=../../support/pcscd_env.sh
source "$here_pcsc/../../support/pcscd_env.sh"
CARD_PIDS=()

pcsc_line_cleanup() {
  local p
  for p in "${CARD_PIDS[@]}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
  pcsc_down
  line_down
}
trap pcsc_line_cleanup EXIT

pcsc_line_up() {
  local dir=$1 n=$2 rc=0
  pcsc_up "$dir/pcsc" "$n" || rc=$?
  if [ "$rc" -eq 77 ]; then
    echo "SKIP: the test's own pcscd cannot run on this machine (see above); nothing was tested"
    exit 77
  fi
  [ "$rc" -eq 0 ] || fail "the test's own pcscd did not start (tests/support/pcscd.sh exit $rc)"
  line_up "$dir" "$n"
  # The TCP fleet goes: the same device directories become cards in the readers.
  local fleet=${LINE_PIDS[-1]}
  kill "$fleet" && wait "$fleet" 2>/dev/null || true
  unset 'LINE_PIDS[-1]'
}

card_in() {
  local i=$1
  shift
  "$LINE_BIN/keyline-device" serve --dir "${LINE_DEVICE_DIRS[$i]}" --vpcd "127.0.0.1:${PCSC_PORTS[$i]}" "$@" \
    >>"$LINE_DIR/logs/card$i.log" 2>&1 &
  CARD_PIDS[$i]=$!
}

card_out() {
  local i=$1
  kill -9 "${CARD_PIDS[$i]}" 2>/dev/null || true
  wait "${CARD_PIDS[$i]}" 2>/dev/null || true
  CARD_PIDS[$i]=
}

wait_card_state() {
  local want=$2 got
  for _ in $(seq 100); do
    got=$(opensc-tool --list-readers 2>/dev/null | grep -F " ${PCSC_READERS[$1]}" | awk '{print $2}')
    [ "$want" = present ] && [ "$got" = Yes ] && return 0
    [ "$want" = absent ] && [ "$got" = No ] && return 0
    sleep 0.1
  done
  fail "reader ${PCSC_READERS[$1]}: card not $want after 10 s (opensc-tool says '$got')"
}

chip_of() { "$LINE_BIN/keyline-device" status --dir "${LINE_DEVICE_DIRS[$1]}" | awk '$1=="chip_id"{print $2}'; }
