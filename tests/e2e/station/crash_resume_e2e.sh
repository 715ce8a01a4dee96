#!/usr/bin/env bash
# docs/design.md §9 invariant 4 for the station: a crash at any step boundary resumes on the next run with the
# same IMEI and keys, nothing lost and nothing duplicated. Each device of a line gets killed (abort, no
# cleanup, like kill -9) at another step through KEYLINE_STATION_CRASH_AT (keyline-station-faulty), then personalized again.
# Environment: LINE_BIN (the programs), E2E_DIR (scratch directory, wiped first).
set -uo pipefail
top=${KEYLINE_SOURCE_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)}
work=${E2E_DIR:?set E2E_DIR}
: "${LINE_BIN:?set LINE_BIN}"
export LINE_BIN
ulimit -c 0

[ -d "$work/line/pg" ] && "$top/scripts/pg.sh" stop "$work/line/pg" >/dev/null 2>&1
rm -rf "$work"
mkdir -p "$work"

# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
trap line_down EXIT

fails=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
check() {
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

steps=(read-device claim issue store backup record publish)
n=${#steps[@]}
line_up "$work/line" "$n" || { echo "line did not come up"; exit 1; }
logs=$LINE_DIR/logs
db=$KEYLINE_STATION_DB
sql() { psql "$db" -tAqc "$1"; }
mapfile -t chips < <(awk '$1 == "listening" {print $3}' "$logs/fleet.out")
pool_before=$(sql "SELECT count(*) FROM pool.imei")

for i in "${!steps[@]}"; do
  s=${steps[$i]}
  chip=${chips[$i]}
  dev=${LINE_DEVICES[$i]}
  KEYLINE_STATION_CRASH_AT=$s "$LINE_BIN/keyline-station-faulty" personalize --json --device "$dev" \
    >"$logs/crash-$s.out" 2>"$logs/crash-$s.err"
  rc=$?
  check "crash at $s: the station died (exit $rc)" test "$rc" -ge 128
  imei_crash=$(sql "SELECT imei FROM journal.device WHERE chip_id = '$chip' AND state <> 'void'")
  state_crash=$(sql "SELECT state FROM journal.device WHERE chip_id = '$chip' AND state <> 'void'")
  "$LINE_BIN/keyline-station" personalize --json --device "$dev" >"$logs/resume-$s.out" 2>"$logs/resume-$s.err"
  rc=$?
  r=$(cat "$logs/resume-$s.out")
  imei=$(sql "SELECT imei FROM journal.device WHERE chip_id = '$chip' AND state = 'published'")
  if [ "$s" = publish ]; then
    # The device was finished before the crash: the next run refuses it and claims nothing.
    check "crash at $s: journal already said published ($state_crash)" test "$state_crash" = published
    check "crash at $s: the rerun refuses the finished device (exit $rc)" grep -q '"error_code":4011' <<<"$r"
  else
    check "crash at $s: resumed and done (exit $rc)" grep -q '"done":true' <<<"$r"
  fi
  check "crash at $s: one journal row for the chip" \
    test "$(sql "SELECT count(*) FROM journal.device WHERE chip_id = '$chip'")" = 1
  check "crash at $s: published with an IMEI ($imei)" grep -Eq '^[0-9]{15}$' <<<"$imei"
  if [ -n "$imei_crash" ]; then
    check "crash at $s: the rerun kept the crashed claim's IMEI ($state_crash $imei_crash)" test "$imei" = "$imei_crash"
  else
    check "crash at $s: nothing was claimed before the crash" test "$s" = read-device
  fi
  code=$(curl -s -o "$work/rec-$i.json" -w '%{http_code}' --cacert "$LINE_DIR/pki/tls-ca.pem" "$LINE_BACKUPDB_URL/v1/imei/$imei")
  check "crash at $s: the public DB has the record (HTTP $code)" test "$code" = 200
  check "crash at $s: the public record is this chip's" grep -q "$chip" "$work/rec-$i.json"
  boot=$("$LINE_BIN/keyline-device" boot --dir "${LINE_DEVICE_DIRS[$i]}" 2>&1)
  check "crash at $s: the device boots as $imei" grep -qx "imei $imei" <<<"$boot"
done

check "no IMEI issued twice" \
  test "$(sql "SELECT count(*) - count(DISTINCT imei) FROM journal.device")" = 0
check "the pool lost exactly one IMEI per device" \
  test "$(sql "SELECT count(*) FROM pool.imei")" = $((pool_before - n))
check "every spent IMEI is in the journal" \
  test "$(sql "SELECT count(*) FROM pool.imei_spent s WHERE NOT EXISTS (SELECT 1 FROM journal.device d WHERE d.imei = s.imei)")" = 0
check "nothing left in the outbox" \
  test "$(sql "SELECT count(*) FROM journal.outbox WHERE published_at IS NULL")" = 0
check "one secret record per device" test "$(sql "SELECT count(*) FROM secret.device")" = "$n"

echo "e2e.station.crash_resume: $fails failed check(s)"
[ "$fails" -eq 0 ]
