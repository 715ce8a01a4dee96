#!/usr/bin/env bash
# Issue 5: a device that returns a corrupt backup is not published, and its IMEI is never given to
# another device. The emulator's --corrupt-backup fault flips one bit of what GET DATA DF20 returns.
# Environment: LINE_BIN (the programs), E2E_DIR (scratch directory, wiped first).
set -uo pipefail
top=${KEYLINE_SOURCE_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)}
work=${E2E_DIR:?set E2E_DIR}
: "${LINE_BIN:?set LINE_BIN}"
export LINE_BIN

[ -d "$work/line/pg" ] && "$top/scripts/pg.sh" stop "$work/line/pg" >/dev/null 2>&1
rm -rf "$work"
mkdir -p "$work"
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
trap line_down EXIT

fails=0
check() {
  local what=$1
  shift
  if "$@"; then printf 'ok   %s\n' "$what"; else printf 'FAIL %s\n' "$what"; fails=$((fails + 1)); fi
}

LINE_DEVICE_FLAGS=--corrupt-backup line_up "$work/line" 2 || { echo "line did not come up"; exit 1; }
chip=$(awk 'NR==1 {print $3}' "$work/line/logs/fleet.out")
out=$("$LINE_BIN/keyline-station" personalize --json --device "${LINE_DEVICES[0]}" 2>"$work/err")
rc=$?
imei=$(sed -n 's/.*"imei":"\([0-9]*\)".*/\1/p' <<<"$out")
check "personalize refuses with exit 5 (got $rc)" test "$rc" -eq 5
check "the error names the chip, the backup step and code 4012 ($out)" \
  grep -q "\"chip_id\":\"$chip\".*\"step\":\"backup\",\"error_code\":4012" <<<"$out"
check "the journal row is void" test "$(line_station_sql "SELECT state FROM journal.device WHERE imei = '$imei'")" = void
check "the wrapped keys are wiped from the void row" \
  test "$(line_station_sql "SELECT count(*) FROM journal.device WHERE imei = '$imei' AND (identity_wrapped IS NOT NULL OR transport_wrapped IS NOT NULL)")" = 0
check "nothing waits in the outbox" test "$(line_station_sql "SELECT count(*) FROM journal.outbox")" = 0
check "no secret DB row" test "$(line_station_sql "SELECT count(*) FROM secret.device")" = 0
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/line/pki/tls-ca.pem" "$LINE_BACKUPDB_URL/v1/records/$chip")
check "the public DB has no record (HTTP $code)" test "$code" = 404
check "the IMEI is spent, not back in the pool" \
  test "$(line_station_sql "SELECT (SELECT count(*) FROM pool.imei WHERE imei = '$imei'), (SELECT count(*) FROM pool.imei_spent WHERE imei = '$imei')")" = "0|1"
# The next device gets another IMEI (and is refused the same way: the whole fleet is faulty).
out2=$("$LINE_BIN/keyline-station" personalize --json --device "${LINE_DEVICES[1]}" 2>/dev/null)
imei2=$(sed -n 's/.*"imei":"\([0-9]*\)".*/\1/p' <<<"$out2")
check "the next device is offered another IMEI ($imei2 != $imei)" test -n "$imei2" -a "$imei2" != "$imei"
[ "$fails" -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
