#!/usr/bin/env bash
# Issue #5 end to end: personalize emulated devices through keyline-station on a whole line, then check
# the certificates with openssl, the databases with psql, the token with pkcs11-tool, the devices with
# keyline-device, the refusals (personalized device, corrupt backup, foreign and expired TLS client
# certificates) and that no secret reached a log.
# Environment: LINE_BIN (the programs), E2E_DIR (scratch directory, wiped first).
set -uo pipefail
top=${KEYLINE_SOURCE_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)}
work=${E2E_DIR:?set E2E_DIR}
: "${LINE_BIN:?set LINE_BIN}"
export LINE_BIN

[ -d "$work/line/pg" ] && "$top/scripts/pg.sh" stop "$work/line/pg" >/dev/null 2>&1
rm -rf "$work"
mkdir -p "$work/certs" "$work/tls"

# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
trap line_down EXIT

fails=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
check() {  # description command...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
json_field() {  # json key -> value of a string or number field (flat JSON lines only)
  sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\)\"\{0,1\}[,}].*/\1/p" <<<"$1" | head -n1
}

line_up "$work/line" 4 2> >(tee "$work/line-up.err" >&2) || { echo "line did not come up"; exit 1; }
logs=$LINE_DIR/logs
pki=$LINE_DIR/pki
db=$KEYLINE_STATION_DB
sql() { psql "$db" -tAqc "$1"; }
station() {  # name args... : runs keyline-station (or $STATION) with its output kept under logs/
  local name=$1
  shift
  "$LINE_BIN/${STATION:-keyline-station}" "$@" >"$logs/station-$name.out" 2>"$logs/station-$name.err"
}
mapfile -t chips < <(awk '$1 == "listening" {print $3}' "$logs/fleet.out")
[ "${#chips[@]}" -eq 4 ] || { echo "expected 4 devices, got ${#chips[@]}"; exit 1; }

# --- personalize devices 0 and 1 -----------------------------------------------------------------
station personalize personalize --json --device "${LINE_DEVICES[0]}" --device "${LINE_DEVICES[1]}"
rc=$?
check "personalize of two devices exits 0" test "$rc" -eq 0
mapfile -t results <"$logs/station-personalize.out"
check "one JSON line per device" test "${#results[@]}" -eq 2

imeis=()
for i in 0 1; do
  r=${results[$i]:-}
  chip=$(json_field "$r" chip_id)
  imei=$(json_field "$r" imei)
  imeis+=("$imei")
  check "device $i done and published" grep -q '"done":true' <<<"$r"
  check "device $i chip ID is the fleet's" test "$chip" = "${chips[$i]}"
  check "device $i IMEI is 15 digits" grep -Eq '^[0-9]{15}$' <<<"$imei"

  # The identity certificate as the public DB serves it.
  der=$work/certs/identity-$i.der
  pem=$work/certs/identity-$i.pem
  code=$(curl -s -o "$der" -w '%{http_code}' --cacert "$pki/tls-ca.pem" "$LINE_BACKUPDB_URL/v1/records/$chip/certificate")
  check "device $i certificate served by the public DB (HTTP $code)" test "$code" = 200
  openssl x509 -inform DER -in "$der" -out "$pem" 2>/dev/null
  out=$(openssl verify -CAfile "$pki/root.pem" -untrusted "$pki/device-ca.pem" "$pem" 2>&1)
  check "device $i openssl verify: $out" test "$out" = "$pem: OK"
  # A certificate from a foreign root must not verify against ours (the check above can fail).
  check "device $i does not verify without the Device CA" \
    bash -c "! openssl verify -CAfile '$pki/root.pem' '$pem' >/dev/null 2>&1"
  subject=$(openssl x509 -in "$pem" -noout -subject -nameopt RFC2253)
  check "device $i subject has serialNumber=$imei ($subject)" grep -q "serialNumber=$imei\(,\|$\)" <<<"$subject"
  # OpenSSL 3.0 prints the otherName as <unsupported>: read the SAN extension's DER instead.
  off=$(openssl asn1parse -inform DER -in "$der" | grep -A1 'X509v3 Subject Alternative Name' |
    sed -n '2s/^ *\([0-9]*\):.*OCTET STRING.*/\1/p')
  san=$(openssl asn1parse -inform DER -in "$der" -strparse "$off" 2>&1)
  printf '%s\n' "$san" >"$work/certs/san-$i.txt"
  check "device $i SAN holds the HardwareModuleName OID 1.3.6.1.5.5.7.8.4" \
    grep -Eq 'OBJECT +:(1\.3\.6\.1\.5\.5\.7\.8\.4|[Hh]ardware ?[Mm]odule ?[Nn]ame|id-on-hardwareModuleName)' <<<"$san"
  check "device $i SAN holds the 10 chip-ID bytes $chip" grep -q "OCTET STRING *\[HEX DUMP\]:$chip\$" <<<"$san"
  sanhex=$(openssl x509 -in "$pem" -outform DER | od -An -tx1 | tr -d ' \n' | tr a-f A-F)
  check "device $i DER carries OID 1.3.6.1.5.5.7.8.4 (06082B06010505070804)" grep -q 06082B06010505070804 <<<"$sanhex"

  # Databases: pool rows gone, spent recorded, secret record, audit trail, journal state, public record.
  check "device $i IMEI gone from pool.imei" test "$(sql "SELECT count(*) FROM pool.imei WHERE imei = '$imei'")" = 0
  check "device $i IMEI in pool.imei_spent" test "$(sql "SELECT count(*) FROM pool.imei_spent WHERE imei = '$imei'")" = 1
  check "device $i secret.device row" \
    test "$(sql "SELECT imei FROM secret.device WHERE chip_id = '$chip' AND comm_key_kcv ~ '^[0-9A-F]{6}'")" = "$imei"
  check "device $i journal state published" \
    test "$(sql "SELECT state FROM journal.device WHERE chip_id = '$chip' AND state <> 'void'")" = published
  check "device $i journal keeps no wrapped keys" \
    test "$(sql "SELECT count(*) FROM journal.device WHERE chip_id = '$chip' AND (identity_wrapped IS NOT NULL OR transport_wrapped IS NOT NULL)")" = 0
  audit=$(sql "SELECT string_agg(DISTINCT event || '/' || cert_kind, ' ' ORDER BY event || '/' || cert_kind) FROM journal.audit WHERE chip_id = '$chip' AND imei = '$imei'")
  check "device $i audit has sign.begin and sign.done for identity and transport ($audit)" \
    test "$audit" = "sign.begin/identity sign.begin/transport sign.done/identity sign.done/transport"
  check "device $i audit begin precedes done" test "$(sql "SELECT bool_and(b.id < d.id) FROM journal.audit b JOIN journal.audit d USING (chip_id, cert_kind) WHERE chip_id = '$chip' AND b.event = 'sign.begin' AND d.event = 'sign.done'")" = t
  rec=$(curl -s --cacert "$pki/tls-ca.pem" "$LINE_BACKUPDB_URL/v1/imei/$imei")
  check "device $i public record by IMEI names the chip" grep -q "\"chip_id\" *: *\"$chip\"" <<<"$rec"

  boot=$("$LINE_BIN/keyline-device" boot --dir "${LINE_DEVICE_DIRS[$i]}" 2>&1)
  check "device $i boots and reports IMEI $imei" grep -qx "imei $imei" <<<"$boot"
done
check "two devices got two IMEIs" test "${imeis[0]}" != "${imeis[1]}"
cols=$(sql "SELECT string_agg(column_name, ',') FROM information_schema.columns WHERE table_schema = 'secret' AND table_name = 'device' AND (column_name ~* 'private|wrapped|pkcs8|secret' OR data_type = 'bytea')")
check "secret.device has no private-key column (found: '$cols')" test -z "$cols"

# --- the token: every manufacturer key sensitive and never extractable ----------------------------
listing=$(pkcs11-tool --module "$(cat "$LINE_DIR/hsm/module")" --token-label keyline --login \
  --pin "$(cat "$LINE_DIR/hsm/user.pin")" -O 2>/dev/null)
printf '%s\n' "$listing" >"$work/pkcs11-objects.txt"
for label in keyline-root keyline-device-ca keyline-service-ca keyline-station-tls keyline-master keyline-wrap; do
  # The private or secret key block with this label (the public half of a key pair shares the label).
  access=$(awk -v l="$label" '
    /^[A-Z]/ { kind = $0; lab = "" }
    /^ +label: +/ { sub(/^ +label: +/, ""); lab = $0 }
    /^ +Access: +/ && lab == l && (kind ~ /^Private Key Object/ || kind ~ /^Secret Key Object/) { print }
  ' <<<"$listing")
  check "$label on the token is sensitive ($access)" grep -Eq 'Access:( +|.*, )sensitive(,|$)' <<<"$access"
  check "$label on the token is never extractable" grep -q 'never extractable' <<<"$access"
done

# --- refusal: an already personalized device, before any claim -------------------------------------
before=$(sql "SELECT (SELECT count(*) FROM pool.imei) || '/' || (SELECT count(*) FROM pool.imei_spent) || '/' || (SELECT count(*) FROM journal.device)")
station again personalize --json --device "${LINE_DEVICES[0]}"
rc=$?
r=$(cat "$logs/station-again.out")
check "second personalize of device 0 is refused: exit 5 (got $rc)" test "$rc" -eq 5
check "refusal names the chip and step read-device" grep -q "chip ${chips[0]}: step read-device" "$logs/station-again.err"
check "refusal has error code 4011" grep -q '"error_code":4011' <<<"$r"
after=$(sql "SELECT (SELECT count(*) FROM pool.imei) || '/' || (SELECT count(*) FROM pool.imei_spent) || '/' || (SELECT count(*) FROM journal.device)")
check "no IMEI consumed by the refusal (pool/spent/journal $before -> $after)" test "$before" = "$after"
"$LINE_BIN/keyline-station" pool status --json >"$logs/station-pool-status.out" 2>&1
check "pool status reports the same pool" grep -q "\"imeis\":${before%%/*}," "$logs/station-pool-status.out"

# --- refusal: a device whose backup does not open ----------------------------------------------------
# keyline-device has no flag that corrupts the backup it returns, so: personalization crashes right
# after STORE DATA (the journal keeps state "issued"), the device's flash gets one bit flipped, and
# the next run resumes at the backup step.
KEYLINE_STATION_CRASH_AT=store STATION=keyline-station-faulty station crash personalize --json --device "${LINE_DEVICES[2]}"
rc=$?
check "crash hook aborted the station after store (exit $rc)" test "$rc" -ge 128
imei2=$(sql "SELECT imei FROM journal.device WHERE chip_id = '${chips[2]}' AND state = 'issued'")
check "device 2 journal state issued after the crash" grep -Eq '^[0-9]{15}$' <<<"$imei2"
"$LINE_BIN/keyline-device" corrupt-flash --dir "${LINE_DEVICE_DIRS[2]}" >>"$logs/corrupt.log" 2>&1
station corrupt personalize --json --device "${LINE_DEVICES[2]}"
rc=$?
r=$(cat "$logs/station-corrupt.out")
check "corrupt backup: personalize refused: exit 5 (got $rc)" test "$rc" -eq 5
check "corrupt backup: failure at step backup with 4012 ($r)" grep -q '"step":"backup","error_code":4012' <<<"$r"
check "corrupt backup: error names the chip" grep -q "chip ${chips[2]}: step backup" "$logs/station-corrupt.err"
check "corrupt backup: IMEI voided in the journal" \
  test "$(sql "SELECT state FROM journal.device WHERE imei = '$imei2'")" = void
check "corrupt backup: IMEI stays spent, not back in the pool" \
  test "$(sql "SELECT (SELECT count(*) FROM pool.imei_spent WHERE imei = '$imei2')::text || (SELECT count(*) FROM pool.imei WHERE imei = '$imei2')::text")" = 10
check "corrupt backup: no secret record" test "$(sql "SELECT count(*) FROM secret.device WHERE chip_id = '${chips[2]}'")" = 0
check "corrupt backup: nothing in the outbox" test "$(sql "SELECT count(*) FROM journal.outbox WHERE chip_id = '${chips[2]}'")" = 0
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$pki/tls-ca.pem" "$LINE_BACKUPDB_URL/v1/records/${chips[2]}")
check "corrupt backup: not published (HTTP $code)" test "$code" = 404
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$pki/tls-ca.pem" "$LINE_BACKUPDB_URL/v1/imei/$imei2")
check "corrupt backup: its IMEI not published (HTTP $code)" test "$code" = 404

# The voided IMEI is never given to another device. (Device 3 goes with short APDUs only, as a reader
# without extended length would need: 240-byte STORE DATA blocks, 61XX answers, command chaining.)
station dev3 --short-apdus personalize --json --device "${LINE_DEVICES[3]}"
rc=$?
imei3=$(json_field "$(cat "$logs/station-dev3.out")" imei)
check "device 3 personalized with short APDUs only (exit $rc)" test "$rc" -eq 0
check "device 3 did not get the voided IMEI ($imei3 vs $imei2)" test -n "$imei3" -a "$imei3" != "$imei2"

# --- the public DB refuses station certificates it did not issue, or that expired ------------------
pin=$(cat "$LINE_DIR/hsm/user.pin")
tls=$work/tls
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tls/client.key" 2>/dev/null
# The station profile (docs/decisions.md): OU=keyline station, CN=<station id>, clientAuth only, the keyline
# station policy, SKI/AKI. Certificates that have all of it but are foreign or expired must still be refused.
openssl req -new -key "$tls/client.key" -subj "/OU=keyline station/CN=station-e2e" -out "$tls/client.csr" 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\ncertificatePolicies=1.3.6.1.4.1.59999.2.1\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' >"$tls/client.ext"
# A foreign CA with its own client certificate.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tls/foreign-ca.key" \
  -subj "/CN=Foreign CA" -days 30 -out "$tls/foreign-ca.pem" 2>/dev/null
openssl x509 -req -in "$tls/client.csr" -CA "$tls/foreign-ca.pem" -CAkey "$tls/foreign-ca.key" -CAcreateserial \
  -days 30 -extfile "$tls/client.ext" -out "$tls/foreign.pem" 2>/dev/null
# Certificates from the real service CA, whose key is on the token: openssl ca through the PKCS#11 engine.
mkdir -p "$tls/ca/new"
: >"$tls/ca/index.txt"
echo 1000 >"$tls/ca/serial"
cat >"$tls/ca.cnf" <<CNF
[ca]
default_ca = d
[d]
database = $tls/ca/index.txt
new_certs_dir = $tls/ca/new
serial = $tls/ca/serial
default_md = sha256
policy = p
unique_subject = no
x509_extensions = e
[p]
organizationalUnitName = supplied
commonName = supplied
[e]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
certificatePolicies = 1.3.6.1.4.1.59999.2.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[nopolicy]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
ca_sign() {  # out extra-args...
  local out=$1
  shift
  openssl ca -batch -notext -config "$tls/ca.cnf" -engine pkcs11 -keyform engine \
    -keyfile "pkcs11:token=keyline;object=keyline-service-ca;type=private;pin-value=$pin" \
    -cert "$pki/service-ca.pem" -in "$tls/client.csr" -out "$out" "$@" >>"$tls/openssl-ca.log" 2>&1
}
ca_sign "$tls/expired.pem" -startdate 20200101000000Z -enddate 20200201000000Z
check "expired client certificate made by the service CA" openssl x509 -in "$tls/expired.pem" -noout
ca_sign "$tls/valid.pem" -days 1
ca_sign "$tls/nopolicy.pem" -days 1 -extensions nopolicy
check "valid client certificate made by the service CA" \
  openssl verify -CAfile "$pki/root.pem" -untrusted "$pki/service-ca.pem" "$tls/valid.pem"
record=$work/record.json
sql "SELECT record_json FROM journal.outbox WHERE chip_id = '${chips[0]}'" >"$record"
post() {  # cert [key] -> HTTP status ("000" when the TLS handshake was refused)
  curl -s -o "$tls/post.body" -w '%{http_code}' --cacert "$pki/tls-ca.pem" --cert "$1" --key "${2:-$tls/client.key}" \
    -H 'Content-Type: application/json' --data-binary "@$record" "$LINE_BACKUPDB_URL/v1/records"
}
code=$(post "$tls/valid.pem")
check "a valid service-CA client certificate may publish (identical re-publish, HTTP $code)" test "$code" = 200
# The public DB asks for a client certificate without requiring one (reads need none), so every
# refused certificate gets through the handshake and is refused by the publish route itself: 403
# with a problem document, nothing stored, not a handshake failure (000) nor a 401.
records_before=$(line_public_sql "SELECT count(*) FROM records")
refused() {  # description cert [key]
  local what=$1 code
  shift
  code=$(post "$@")
  check "$what (HTTP $code, want 403)" test "$code" = 403
  check "$what: a problem document" grep -q '"status":403' "$tls/post.body"
}
refused "an expired station certificate is refused" "$tls/expired.pem"
refused "a service-CA clientAuth certificate without the station policy is refused" "$tls/nopolicy.pem"
# Issue 12: the KPS's and the public DB's own server certificates (same service CA, keys in plain files)
# may not publish.
refused "the KPS server certificate may not publish" "$pki/kps-tls.pem" "$pki/kps-tls.key"
refused "the public DB's own server certificate may not publish" "$pki/backupdb-tls.pem" "$pki/backupdb-tls.key"
refused "a foreign station certificate is refused" "$tls/foreign.pem"
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$pki/tls-ca.pem" -H 'Content-Type: application/json' \
  --data-binary "@$record" "$LINE_BACKUPDB_URL/v1/records")
check "no client certificate is refused (HTTP $code, want 401)" test "$code" = 401
records_after=$(line_public_sql "SELECT count(*) FROM records")
check "the refused publishes stored nothing ($records_before -> $records_after records)" \
  test -n "$records_before" -a "$records_before" = "$records_after"

# --- no secret in any log line ---------------------------------------------------------------------
line_down  # flush and close every log
trap - EXIT
logfiles=("$logs"/* "$work/line-up.err")
needles=("$(cat "$LINE_DIR/hsm/user.pin")" "$(cat "$LINE_DIR/hsm/so.pin")" "PRIVATE KEY")
for d in "${LINE_DEVICE_DIRS[@]}"; do
  k=$(od -An -tx1 -v "$d/secure/chip.key" | tr -d ' \n')
  needles+=("$k" "$(tr a-f A-F <<<"$k")")
done
check "needles are real (${#needles[@]}; chip keys 64 hex digits)" test "${#needles[3]}" -eq 64
# What each personalized device holds (DGIs 8101 identity key PKCS#8, 8102 transport scalar, 8103
# communication key), read by opening its sealed backup with its chip key as the chip does at boot
# (keyline-test-unseal): hex in both cases and base64, the PKCS#8 also as PEM lines and its bare
# P-256 scalar. Kept in variables only, never in a file under logs/.
unsealed=0
plants=()  # one needle of each kind, planted in a copy of a log below to prove the scan finds it
for d in "${LINE_DEVICE_DIRS[@]}"; do
  dump=$("$LINE_BIN/keyline-test-unseal" "$d" 2>/dev/null) || continue  # not personalized, or corrupted
  unsealed=$((unsealed + 1))
  while read -r dgi enc value; do
    needles+=("$value")
    if [ "$dgi" = 8101 ] && [ "$enc" = b64 ]; then
      while read -r line; do needles+=("$line"); done < <(fold -w64 <<<"$value")
    fi
    if [ "$dgi" = 8101 ] && [ "$enc" = hex ]; then
      scalar=${value#*0201010420}  # ECPrivateKey: version 1, then privateKey OCTET STRING (32)
      [ "$scalar" != "$value" ] && needles+=("${scalar:0:64}" "$(tr a-f A-F <<<"${scalar:0:64}")")
    fi
    [ "$unsealed" -eq 1 ] && plants+=("$dgi/$enc:$value")
  done <<<"$dump"
done
check "device secrets read from $unsealed personalized devices (want >= 2)" test "$unsealed" -ge 2
check "each device gives PKCS#8, transport and communication key in hex, HEX and base64 (${#plants[@]} kinds)" \
  test "${#plants[@]}" -eq 9
# scan_for_secrets FILES...: prints each file a needle appears in; returns how many needles appeared.
scan_for_secrets() {
  local n hits found=0
  for n in "${needles[@]}"; do
    [ -n "$n" ] || continue
    if hits=$(grep -rlF -- "$n" "$@"); then
      found=$((found + 1))
      echo "a secret appears in: $hits"
    fi
  done
  return "$((found > 255 ? 255 : found))"
}
check "logs collected (${#logfiles[@]} files)" test "${#logfiles[@]}" -ge 8
leaks=0
scan_out=$(scan_for_secrets "${logfiles[@]}") || leaks=$?
[ -n "$scan_out" ] && echo "$scan_out"
check "no PIN, chip key, device private key, transport scalar or communication key in any log (${#needles[@]} needles, ${#logfiles[@]} files)" test "$leaks" -eq 0
# The scan can find what it looks for: each kind of device secret planted in a copy of a real log.
mkdir -p "$work/planted"
for p in "${plants[@]}"; do
  kind=${p%%:*}
  cp "${logfiles[0]}" "$work/planted/log"
  printf 'station: a leaked value %s in a line\n' "${p#*:}" >>"$work/planted/log"
  rc=0; scan_for_secrets "$work/planted/log" >/dev/null || rc=$?
  check "the scan finds a planted $kind" test "$rc" -gt 0
done
# The grep can find what it looks for: the server key file itself holds a PEM private key.
check "the grep sees a private key where one is" grep -qF "PRIVATE KEY" "$pki/backupdb-tls.key"

echo "e2e.station.personalize: $fails failed check(s)"
[ "$fails" -eq 0 ]
