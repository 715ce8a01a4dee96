#!/usr/bin/env bash
# The station's store-and-forward and its command-line contract: a public DB that does not answer
# leaves the record in the outbox (exit 4) and `publish` delivers it later; `status`, `pool import`,
# `pool status`, a second `keys init`, a wrong PIN and an empty pool each answer as documented
# (docs/station.md). Environment: LINE_BIN (the programs), E2E_DIR (scratch directory, wiped first).
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
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
check() {
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

line_up "$work/line" 3 || { echo "line did not come up"; exit 1; }
logs=$LINE_DIR/logs
db=$KEYLINE_STATION_DB
sql() { psql "$db" -tAqc "$1"; }
st() { "$LINE_BIN/keyline-station" "$@"; }
mapfile -t chips < <(awk '$1 == "listening" {print $3}' "$logs/fleet.out")

# --- the public DB is down: the record waits in the outbox ------------------------------------------
dead=https://127.0.0.1:$(line_free_port)
out=$(KEYLINE_BACKUPDB_URL=$dead st personalize --json --device "${LINE_DEVICES[0]}" 2>"$work/down.err")
rc=$?
check "public DB down: exit 4 (got $rc)" test "$rc" -eq 4
check "public DB down: result says in_outbox" grep -q '"in_outbox":true' <<<"$out"
check "public DB down: error names the chip and step publish" grep -q "chip ${chips[0]}: step publish" "$work/down.err"
check "public DB down: journal state backed_up" \
  test "$(sql "SELECT state FROM journal.device WHERE chip_id = '${chips[0]}'")" = backed_up
status=$(st status --json)
check "status --json shows one record waiting ($status)" grep -q '"outbox":{"pending":1,' <<<"$status"
check "status --json shows the journal state" grep -q '"backed_up":1' <<<"$status"
out=$(KEYLINE_BACKUPDB_URL=$dead st publish 2>&1)
rc=$?
check "publish while the public DB is down: exit 4 (got $rc: $out)" test "$rc" -eq 4
out=$(st publish 2>&1)
rc=$?
check "publish delivers the waiting record (exit $rc: $out)" test "$rc" -eq 0
check "publish reports one record" grep -q "1 records published, 0 still waiting" <<<"$out"
check "after publish: journal state published" \
  test "$(sql "SELECT state FROM journal.device WHERE chip_id = '${chips[0]}'")" = published
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$LINE_DIR/pki/tls-ca.pem" "$LINE_BACKUPDB_URL/v1/records/${chips[0]}")
check "after publish: the public DB has the record (HTTP $code)" test "$code" = 200
out=$(st publish 2>&1)
check "publish with an empty outbox does nothing ($out)" grep -q "0 records published, 0 still waiting" <<<"$out"

# --- the station's own client certificate expired: the public DB refuses, the record waits -------------
pki=$LINE_DIR/pki
pin=$(cat "$LINE_DIR/hsm/user.pin")
ca=$work/ca
mkdir -p "$ca/new"
: >"$ca/index.txt"
echo 2000 >"$ca/serial"
cat >"$ca/ca.cnf" <<CNF
[ca]
default_ca = d
[d]
database = $ca/index.txt
new_certs_dir = $ca/new
serial = $ca/serial
default_md = sha256
policy = p
unique_subject = no
x509_extensions = e
[p]
commonName = supplied
[e]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
CNF
# A CSR for the station's own token key, signed by the real service CA (both keys stay on the token).
tok() { printf 'pkcs11:token=keyline;object=%s;type=private;pin-value=%s' "$1" "$pin"; }
openssl req -new -engine pkcs11 -keyform engine -key "$(tok keyline-station-tls)" -subj "/CN=station-1" \
  -out "$ca/station.csr" >>"$ca/openssl.log" 2>&1
openssl ca -batch -notext -config "$ca/ca.cnf" -engine pkcs11 -keyform engine -keyfile "$(tok keyline-service-ca)" \
  -cert "$pki/service-ca.pem" -in "$ca/station.csr" -out "$ca/expired.pem" \
  -startdate 20200101000000Z -enddate 20200201000000Z >>"$ca/openssl.log" 2>&1
check "an expired certificate for the station's token key" openssl x509 -in "$ca/expired.pem" -noout
cp "$pki/station-tls.pem" "$ca/station-tls.pem.good"
cat "$ca/expired.pem" "$pki/service-ca.pem" >"$pki/station-tls.pem"
out=$(st personalize --json --device "${LINE_DEVICES[2]}" 2>"$work/expired.err")
rc=$?
check "expired station certificate: refused by the public DB, exit 5 (got $rc)" test "$rc" -eq 5
check "expired station certificate: error 4020 at step publish ($out)" grep -q '"step":"publish","error_code":4020' <<<"$out"
check "expired station certificate: the record waits in the outbox" \
  test "$(sql "SELECT count(*) FROM journal.outbox WHERE chip_id = '${chips[2]}' AND published_at IS NULL")" = 1
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$pki/tls-ca.pem" "$LINE_BACKUPDB_URL/v1/records/${chips[2]}")
check "expired station certificate: not published (HTTP $code)" test "$code" = 404
cp "$ca/station-tls.pem.good" "$pki/station-tls.pem"
out=$(st publish 2>&1)
check "with the good certificate back, publish delivers it ($out)" grep -q "1 records published, 0 still waiting" <<<"$out"
check "then the journal says published" \
  test "$(sql "SELECT state FROM journal.device WHERE chip_id = '${chips[2]}'")" = published

# --- pool import and status -------------------------------------------------------------------------
before=$(st pool status --json)
printf 'imei\n490154203237518\n260531793113837\n' >"$work/good.csv"
printf 'imei\n490154203237518\n12345\n' >"$work/bad.csv"
out=$(st pool import "$work/bad.csv" 2>&1)
rc=$?
check "pool import of a bad file: exit 3 (got $rc)" test "$rc" -eq 3
check "pool import names the bad line ($out)" grep -q "line 3" <<<"$out"
check "pool import of a bad file changes nothing" test "$(st pool status --json)" = "$before"
out=$(st pool import "$work/good.csv" 2>&1)
check "pool import adds two IMEIs ($out)" grep -q "imported 2 IMEIs" <<<"$out"
check "pool status counts them" \
  test "$(st pool status --json | sed 's/.*"imeis":\([0-9]*\),.*/\1/')" = $(($(sed 's/.*"imeis":\([0-9]*\),.*/\1/' <<<"$before") + 2))

# --- an empty pool refuses at the claim and leaves the device blank ----------------------------------
psql "$db" -qc "WITH c AS (DELETE FROM pool.imei RETURNING imei) INSERT INTO pool.imei_spent (imei) SELECT imei FROM c" >/dev/null
out=$(st personalize --json --device "${LINE_DEVICES[1]}" 2>"$work/empty.err")
rc=$?
check "empty pool: exit 1 (got $rc)" test "$rc" -eq 1
check "empty pool: step claim, code 4001 ($out)" grep -q '"step":"claim","error_code":4001' <<<"$out"
check "empty pool: nothing journaled for the chip" \
  test "$(sql "SELECT count(*) FROM journal.device WHERE chip_id = '${chips[1]}'")" = 0
check "empty pool: the device is still blank" \
  bash -c "! '$LINE_BIN/keyline-device' boot --dir '${LINE_DEVICE_DIRS[1]}' >/dev/null 2>&1"
st pool generate --tac 35780502 --count 1 >/dev/null 2>&1
out=$(st personalize --json --device "${LINE_DEVICES[1]}" 2>&1)
check "after pool generate the device is done" grep -q '"done":true' <<<"$out"

# --- keys and PIN ----------------------------------------------------------------------------------
out=$(st keys init 2>&1)
rc=$?
check "keys init on an initialised token changes nothing (exit $rc)" test "$rc" -eq 0
check "keys init on an initialised token says so ($out)" grep -q "nothing changed" <<<"$out"
printf 'wrong-pin\n' >"$work/wrong.pin"
out=$(KEYLINE_HSM_PIN_FILE=$work/wrong.pin st personalize --device "${LINE_DEVICES[2]}" 2>&1)
rc=$?
check "a wrong PIN: exit 6 (got $rc: $out)" test "$rc" -eq 6
check "a wrong PIN is not echoed" bash -c "! grep -q wrong-pin <<<'$out'"
out=$(KEYLINE_HSM_PIN_FILE= KEYLINE_HSM_PIN= st personalize --device "${LINE_DEVICES[2]}" 2>&1)
rc=$?
check "no PIN at all: exit 2 (got $rc: $out)" test "$rc" -eq 2
out=$(st --pin 1234 status 2>&1)
rc=$?
check "the PIN is never a flag (exit $rc)" test "$rc" -ne 0

# --- a flag wins over the environment, also when it names the default ------------------------------
out=$(KEYLINE_HSM_TOKEN=no-such-token st --token keyline pool generate --keys 1 2>&1)
rc=$?
check "--token keyline beats KEYLINE_HSM_TOKEN (exit $rc: $out)" test "$rc" -eq 0
out=$(KEYLINE_HSM_TOKEN=no-such-token st pool generate --keys 1 2>&1)
rc=$?
check "without the flag the environment's token is used (exit $rc)" test "$rc" -eq 6

echo "e2e.station.outbox_cli: $fails failed check(s)"
[ "$fails" -eq 0 ]
