#!/usr/bin/env bash
# Issue #14, failover (docs/custody.md "Failover"): a line under the offline root (line.sh's ceremony) with
# a primary token and a secondary token, each a station of its own (its own Device CA and station
# certificate from the ceremony, the master v2 rolled on the primary and mirrored to the secondary under
# dual control). The primary token's SoftHSM directory is removed in the middle of `keyline-station run`
# of FAILOVER_DEVICES (200) devices: the line probes the primary, switches, and goes on. Then: every
# device published, every identity certificate verifies with openssl against the one root (through
# either Device CA), both Device CAs signed some, no IMEI twice (public DB, journal, voided IMEIs never
# given again, none back in the pool), the summary and --summary-json name the switch and the devices of
# each token, the switch audited; a device of each token wiped and restored (two stations under one root
# into one public DB, the issue's first test); its communication key check value is the mirrored v2's.
# Usage: failover_e2e.sh WORKDIR   (LINE_BIN = directory holding the keyline-* programs)
set -uo pipefail
work=${1:?usage: failover_e2e.sh WORKDIR}
export LINE_ROOT=ceremony
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
trap line_down EXIT
rm -rf "$work"
mkdir -p "$work/out"
n=${FAILOVER_DEVICES:-200}
started=$(date +%s)

fails=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
checke() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

line_up "$work/line" "$n" || exit 1
ST="$LINE_BIN/keyline-station"
DEV="$LINE_BIN/keyline-device"
REC="$LINE_BIN/keyline-recovery"
pki=$LINE_DIR/pki
pkib=$work/pki-b
export KEYLINE_LOG_KEY_FILE=$LINE_LOG_KEY_FILE KEYLINE_LOG_STATE="$work/log-state"
tokens=$LINE_DIR/hsm/tokens
primary_dir=$(ls "$tokens")

# --- the secondary token: beside the primary in the same SoftHSM store, a station of its own ------------
(umask 077; head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/b.pin"; echo >>"$work/b.pin"
 head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/b.so.pin"; echo >>"$work/b.so.pin")
softhsm2-util --init-token --free --label keyline-b --so-pin "$(cat "$work/b.so.pin")" --pin "$(cat "$work/b.pin")" >/dev/null
secondary_dir=$(ls "$tokens" | grep -vxF "$primary_dir")
psql "$LINE_PG_CONNINFO" -qc "CREATE DATABASE keyline_station_b" >/dev/null
db_b=${LINE_PG_CONNINFO/dbname=postgres/dbname=keyline_station_b}
stb() {  # the secondary as a station of its own (its own database for the custody steps)
  KEYLINE_STATION_DB=$db_b "$ST" --token keyline-b --pin-file "$work/b.pin" --pki-dir "$pkib" --station-id station-b "$@" \
    >"$work/last.out" 2>&1
}
stb keys init --offline-root --organization e2e
line_ceremony sign --csr "$pkib/device-ca.csr" --profile device-ca --out "$work/out/b-device-ca.pem" >"$work/sign-b.log" 2>&1
line_ceremony sign --csr "$pkib/station.csr" --profile station --out "$work/out/b-station.pem" >>"$work/sign-b.log" 2>&1
stb keys install-cert --root "$LINE_CEREMONY_DIR/root.pem" --cert "$work/out/b-device-ca.pem" --cert "$work/out/b-station.pem"
checke "the secondary (station-b) is certified under the same offline root" \
  '[ $? = 0 ] && openssl verify -CAfile "$pki/root.pem" "$pkib/device-ca.pem" >/dev/null && [ -n "$secondary_dir" ]'
cp "$pki/tls-ca.pem" "$pkib/tls-ca.pem"  # public: whom the station trusts as the public DB's server

# --- the master: rolled on the primary, mirrored to the secondary (dual control) -------------------------
"$ST" keys roll master >"$work/roll.out" 2>&1
stb keys mirror receive-init --out "$work/out/b.req"
KEYLINE_HSM_SO_PIN_FILE=$LINE_DIR/hsm/so.pin "$ST" keys mirror trust --request "$work/out/b.req" >"$work/trust.out" 2>&1
"$ST" keys mirror send --to "$work/out/b.req" --out "$work/out/a2b.wrapped" >"$work/send.out" 2>&1
stb keys mirror receive --in "$work/out/a2b.wrapped" --from "$pki/station-tls.pem"
checke "master v2 rolled on the primary and mirrored to the secondary" 'grep -q "imported keyline-master-v2" "$work/last.out"'

failover_args=(--secondary-token-label keyline-b --secondary-pin-file "$work/b.pin" --secondary-pki "$pkib")
line_fleet_file "$work/fleet.txt"
# Voided claims take IMEIs of their own.
"$ST" pool generate --tac 35780502 --count 40 >/dev/null

# --- a claim whose keys another token wrapped is voided and claimed again, without a 4013 ---------------
# Deterministic: station-b claims the first device and crashes right after (keyline-station-faulty); the
# run's primary takes that chip first (unfinished rows go to the front) and cannot open station-b's wraps.
read -r _ addr0 chip0 _ <"$work/fleet.txt"
KEYLINE_STATION_CRASH_AT=claim "$LINE_BIN/keyline-station-faulty" --token keyline-b --pin-file "$work/b.pin" \
  --pki-dir "$pkib" --station-id station-b personalize --device "$addr0" >"$work/crash.out" 2>&1
imei_b=$(line_station_sql "SELECT imei FROM journal.device WHERE chip_id = '$chip0' AND state = 'claimed' AND station_id = 'station-b'")
checke "(station-b claimed chip $chip0 and crashed: its row holds keys its token wrapped)" '[ -n "$imei_b" ]'
# And one it stored (STORE DATA done, then a crash): the primary finishes it; its record names station-b's CA.
read -r _ addr1 chip1 _ < <(sed -n 2p "$work/fleet.txt")
KEYLINE_STATION_CRASH_AT=store "$LINE_BIN/keyline-station-faulty" --token keyline-b --pin-file "$work/b.pin" \
  --pki-dir "$pkib" --station-id station-b personalize --device "$addr1" >"$work/crash1.out" 2>&1
imei_s=$(line_station_sql "SELECT imei FROM journal.device WHERE chip_id = '$chip1' AND state = 'issued' AND station_id = 'station-b'")
checke "(station-b stored chip $chip1 and crashed before its backup)" '[ -n "$imei_s" ]'

# --- a secondary that could not take over is refused before any device ------------------------------
"$ST" run --fleet "$work/fleet.txt" --progress plain --secondary-token-label keyline-b --secondary-pki "$pki" \
  >"$work/refused.out" 2>&1
checke "run with the primary's own PKI directory as the secondary's: refused at the start, nothing claimed" \
  '[ $? != 0 ] && grep -q "a station of its own" "$work/refused.out" &&
   [ "$(line_station_sql "SELECT count(*) FROM journal.device")" = 2 ]'

# --- the run; the primary token's directory removed in the middle -------------------------------------------
t0=$(date +%s.%N)
"$ST" run --fleet "$work/fleet.txt" -j 4 --progress plain --publish-wait 60 --summary-json "$work/summary.json" \
  "${failover_args[@]}" >"$work/run.log" 2>&1 &
run_pid=$!
LINE_PIDS+=("$run_pid")
cut_at=$((n / 4))
for _ in $(seq 600); do
  [ "$(line_station_sql "SELECT count(*) FROM journal.device WHERE state IN ('backed_up', 'published')")" -ge "$cut_at" ] && break
  sleep 0.05
done
before_cut=$(line_station_sql "SELECT count(*) FROM journal.device WHERE state IN ('backed_up', 'published')")
rm -rf "${tokens:?}/$primary_dir"
wait "$run_pid"
rc=$?
t1=$(date +%s.%N)
LINE_PIDS=("${LINE_PIDS[@]/$run_pid/}")
checke "the primary token's directory removed after $before_cut of $n devices, mid-run" \
  '[ "$before_cut" -ge "$cut_at" ] && [ "$before_cut" -lt "$n" ] && [ ! -e "$tokens/$primary_dir" ]'
checke "run exits 0 with all $n devices done (published)" \
  '[ "$rc" = 0 ] && grep -Eq "\| done \(published\) +\| +$n \|" "$work/run.log"'
[ "$rc" = 0 ] || tail -n 40 "$work/run.log"
checke "the summary names the switch and each token's devices" \
  'grep -q "^failover: switched to the secondary at 20" "$work/run.log" &&
   grep -q "^token primary .keyline. (station-1): [1-9]" "$work/run.log" &&
   grep -q "^token secondary .keyline-b. (station-b): [1-9]" "$work/run.log"'
checke "the progress output says when it switched" 'grep -q "^line: failover: switched from token" "$work/run.log"'
checke "summary.json: failover at/after_devices, the tokens' devices add up to $n" \
  'python3 - "$work/summary.json" "$n" <<PY
import json, sys
s = json.load(open(sys.argv[1])); n = int(sys.argv[2]); f = s["failover"]
by = {t["role"]: t for t in f["tokens"]}
ok = s["done"] == n and s["failed"] == 0 and f["switched"] and f["at"].endswith("Z") and f["after_devices"] > 0
ok = ok and by["primary"]["devices"] > 0 and by["secondary"]["devices"] > 0
ok = ok and by["primary"]["devices"] + by["secondary"]["devices"] == n and by["secondary"]["station_id"] == "station-b"
sys.exit(0 if ok else 1)
PY'

# --- invariants: published, verified, no IMEI twice ----------------------------------------------------------
checke "the public DB holds $n records, no IMEI twice" \
  '[ "$(line_public_sql "SELECT count(*), count(DISTINCT imei), count(DISTINCT chip_id) FROM records")" = "$n|$n|$n" ]'
line_public_sql "SELECT encode(identity_der, 'hex') FROM records" >"$work/identity.hex"
python3 - "$work/identity.hex" "$work/certs" <<'PY'
import base64, os, sys
os.makedirs(sys.argv[2], exist_ok=True)
for i, line in enumerate(l for l in open(sys.argv[1]).read().split() if l):
    b64 = base64.b64encode(bytes.fromhex(line)).decode()
    body = "\n".join(b64[j:j + 64] for j in range(0, len(b64), 64))
    open(os.path.join(sys.argv[2], "%03d.pem" % i), "w").write("-----BEGIN CERTIFICATE-----\n" + body + "\n-----END CERTIFICATE-----\n")
PY
cat "$pki/device-ca.pem" "$pkib/device-ca.pem" >"$work/both-cas.pem"
verified=$(openssl verify -CAfile "$pki/root.pem" -untrusted "$work/both-cas.pem" "$work"/certs/*.pem 2>&1 | grep -c ': OK$')
checke "every identity certificate ($verified of $n) verifies with openssl against the one root" '[ "$verified" = "$n" ]'
cat "$work"/certs/*.pem >"$work/all-identity.pem"
by_a=$(openssl storeutl -noout -text -certs "$work/all-identity.pem" 2>/dev/null | grep "Issuer:" | sort | uniq -c)
checke "both Device CAs signed devices (station-1's and station-b's)" \
  'echo "$by_a" | grep -q "station-1 Device CA" && echo "$by_a" | grep -q "station-b Device CA"'
checke "none verifies without its own Device CA (the two chains differ)" \
  '[ "$(openssl verify -CAfile "$pki/root.pem" -untrusted "$pki/device-ca.pem" "$work"/certs/*.pem 2>/dev/null | grep -c ": OK$")" -lt "$n" ]'
checke "journal: $n published, every other row void, no IMEI in two rows" \
  '[ "$(line_station_sql "SELECT count(*) FILTER (WHERE state = '"'published'"'), count(*) FILTER (WHERE state NOT IN ('"'published'"', '"'void'"')), count(*) - count(DISTINCT imei) FROM journal.device")" = "$n|0|0" ]'
voided=$(line_station_sql "SELECT count(*) FROM journal.device WHERE state = 'void'")
checke "voided IMEIs ($voided) are spent: none back in the pool, none in the public DB" \
  '[ "$(line_station_sql "SELECT count(*) FROM journal.device d JOIN pool.imei p USING (imei)")" = 0 ] &&
   [ "$(line_station_sql "SELECT count(*) FROM journal.device d LEFT JOIN pool.imei_spent s USING (imei) WHERE s.imei IS NULL")" = 0 ] &&
   [ "$(line_station_sql "SELECT count(*) FROM secret.device")" = "$n" ]'
checke "the secondary's devices derive with the mirrored master v2 (secret DB)" \
  '[ "$(line_station_sql "SELECT count(*) FROM secret.device WHERE master_version <> 2")" = 0 ]'
reason=$(line_station_sql "SELECT void_reason FROM journal.device WHERE chip_id = '$chip0' AND imei = '$imei_b'")
checke "station-b's claim voided by the primary (\"$reason\"), the chip published with another IMEI" \
  'echo "$reason" | grep -q "wrapped by station station-b" &&
   [ "$(line_public_sql "SELECT imei FROM records WHERE chip_id = '"'$chip0'"'")" != "$imei_b" ] &&
   [ "$(line_public_sql "SELECT count(*) FROM records WHERE chip_id = '"'$chip0'"'")" = 1 ]'
checke "the device station-b stored was finished by the primary with its IMEI; its certificate verifies through station-b's CA" \
  '[ "$(line_public_sql "SELECT imei FROM records WHERE chip_id = '"'$chip1'"'")" = "$imei_s" ] &&
   line_public_sql "SELECT encode(identity_der, '"'hex'"') FROM records WHERE chip_id = '"'$chip1'"'" | xxd -r -p |
     openssl x509 -inform DER -out "$work/stored.pem" 2>/dev/null &&
   openssl verify -CAfile "$pki/root.pem" -untrusted "$pkib/device-ca.pem" "$work/stored.pem" >/dev/null 2>&1'
checke "no key set refused as a 4013 (the halt counter never saw those rows)" '! grep -q "error 4013" "$work/run.log"'
audit=$(line_station_sql "SELECT string_agg(event, ',' ORDER BY id) FROM journal.audit WHERE event LIKE 'custody.failover%'")
checke "the switch audited before and after ($audit)" \
  'echo "$audit" | grep -q "custody.failover.begin" && echo "$audit" | grep -q "custody.failover.done$"'

fst=$(ls "$pkib"/custody/*custody-failover*.stmt 2>/dev/null | head -n1)
line_ceremony log import --statement "$fst" >"$work/import.out" 2>&1
checke "the switch left a custody statement signed by the secondary; the ceremony imports it into its log" \
  '[ -n "$fst" ] && grep -q "^result=done$" "$fst" && grep -q "^station_id=station-b$" "$fst" &&
   grep -q "custody.failover done at station station-b" "$work/import.out" && line_ceremony log verify >/dev/null 2>&1'

# --- a device of each token restores --------------------------------------------------------------------------
for s in station-1 station-b; do
  chip=$(line_station_sql "SELECT chip_id FROM journal.device WHERE state = 'published' AND station_id = '$s' ORDER BY id LIMIT 1")
  read -r _ addr _ ddir < <(grep " $chip " "$work/fleet.txt")
  "$DEV" boot --dir "$ddir" >"$work/before-$s.txt" 2>&1
  "$DEV" wipe-flash --dir "$ddir" >/dev/null
  "$REC" restore --device "$addr" --db "$LINE_BACKUPDB_URL" --ca "$pki/tls-ca.pem" --trust "$pki/root.pem" \
    >"$work/restore-$s.out" 2>"$work/restore-$s.err"
  rc=$?
  "$DEV" boot --dir "$ddir" >"$work/after-$s.txt" 2>&1
  checke "a device personalized by $s restores and boots the same identity" \
    '[ "$rc" = 0 ] && [ -s "$work/before-$s.txt" ] && cmp -s "$work/before-$s.txt" "$work/after-$s.txt"'
  [ "$rc" = 0 ] || cat "$work/restore-$s.err"
done

awk -v a="$t0" -v b="$t1" -v w=$(($(date +%s) - started)) -v n="$n" 'BEGIN { printf "failover e2e: run %.1f s, whole test %d s (%d devices)\n", b - a, w, n }'
echo "failover e2e: $fails failure(s)"
[ "$fails" = 0 ]
