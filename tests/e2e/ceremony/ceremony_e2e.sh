#!/usr/bin/env bash
# Issue #14, the offline root end to end: init-root on a SoftHSM root token, one CSR of each profile
# signed and checked with openssl, refused CSRs that leave nothing issued and say so in the log, the log's
# tampering found and named by line, the root key's attributes read with pkcs11-tool, and strace showing
# that no run even tries a network socket.
# Environment: CEREMONY_BIN (the program), E2E_DIR (scratch directory, wiped first).
set -uo pipefail
top=${KEYLINE_SOURCE_DIR:-$(cd "$(dirname "$0")/../../.." && pwd)}
work=${E2E_DIR:?set E2E_DIR}
bin=${CEREMONY_BIN:?set CEREMONY_BIN}
rm -rf "$work"
mkdir -p "$work/csr" "$work/out" "$work/trace" "$work/tamper"
cd "$work" || exit 1

fails=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; fails=$((fails + 1)); }
check() {  # description command...
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}
checke() {  # description 'shell expression' (for && and pipes, evaluated in the caller's variables)
  if eval "$2"; then pass "$1"; else fail "$1"; fi
}

"$top/scripts/hsm.sh" init "$work/root-hsm" keyline-root >/dev/null || exit 1
"$top/scripts/hsm.sh" init "$work/other-hsm" keyline-root >/dev/null || exit 1
module=$(cat "$work/root-hsm/module")

runs=0
# cer HSMDIR CEREMONYDIR args...: one keyline-ceremony run under strace (network syscalls only);
# stdout+stderr in $work/last.out, exit code in $rc.
cer() {
  local hsm=$1 dir=$2
  shift 2
  runs=$((runs + 1))
  SOFTHSM2_CONF=$hsm/softhsm2.conf strace -f -qq -e trace=%network -o "$work/trace/run-$runs.trace" \
    "$bin" --dir "$dir" --hsm-module "$module" --token keyline-root --pin-file "$hsm/user.pin" "$@" \
    >"$work/last.out" 2>&1
  rc=$?
}
root() { cer "$work/root-hsm" "$work/cer" "$@"; }
has() { grep -q -- "$1" "$2"; }
last_line() { tail -n1 "$work/cer/ceremony.log"; }
issued_count() { find "$work/cer/issued" -name '*.pem' 2>/dev/null | wc -l; }

# --- init-root ----------------------------------------------------------------------------------
root init-root --subject-cn "keyline e2e Root" --organization "keyline e2e" --days 7300
check "init-root succeeds" [ "$rc" = 0 ]
check "root certificate written" [ -s "$work/cer/root.pem" ]
openssl x509 -in "$work/cer/root.pem" -noout -text >"$work/root.txt"
check "root: CA:TRUE, pathlen:1, critical" grep -A1 -q 'Basic Constraints: critical' "$work/root.txt"
check "root: path length 1" has 'CA:TRUE, pathlen:1' "$work/root.txt"
check "root: keyCertSign and cRLSign only" has 'Certificate Sign, CRL Sign$' "$work/root.txt"
check "root: self-signed, verifies" openssl verify -CAfile "$work/cer/root.pem" "$work/cer/root.pem"
root init-root --subject-cn "second root" --days 10
checke "a second init-root is refused (exit 5, 7001)" '[ "$rc" = 5 ] && has "error 7001" "$work/last.out"'
check "the refused init-root left the root as it was" openssl verify -CAfile "$work/cer/root.pem" "$work/cer/root.pem"

# --- the root key on the token ------------------------------------------------------------------
SOFTHSM2_CONF=$work/root-hsm/softhsm2.conf pkcs11-tool --module "$module" --token-label keyline-root --login \
  --pin "$(cat "$work/root-hsm/user.pin")" --list-objects >"$work/objects.txt" 2>/dev/null
awk '/^Private Key Object/{p=1} p&&/^(Public|Secret|Certificate|Data)/{p=0} p' "$work/objects.txt" >"$work/priv.txt"
checke "one private key on the root token, labelled keyline-root" \
  '[ "$(grep -c "^Private Key Object" "$work/objects.txt")" = 1 ] && has "label: *keyline-root" "$work/priv.txt"'
check "root key usage: sign only" grep -Eq '^ *Usage: *sign$' "$work/priv.txt"
check "root key: sensitive, always sensitive, never extractable" \
  grep -Eq 'Access: *sensitive, always sensitive, never extractable' "$work/priv.txt"
check "no secret key on the root token" bash -c "! grep -q '^Secret Key Object' '$work/objects.txt'"
if SOFTHSM2_CONF=$work/root-hsm/softhsm2.conf pkcs11-tool --module "$module" --token-label keyline-root --login \
  --pin "$(cat "$work/root-hsm/user.pin")" --read-object --type privkey --label keyline-root -o "$work/leak.der" \
  >/dev/null 2>&1 && [ -s "$work/leak.der" ]; then
  fail "the root private key could be read off the token"
else
  pass "the root private key cannot be read off the token"
fi

# --- one CSR of each profile --------------------------------------------------------------------
mkcsr() {  # name subject [openssl req args...]
  local name=$1 subj=$2
  shift 2
  openssl ecparam -name prime256v1 -genkey -noout -out "$work/csr/$name.key" 2>/dev/null
  openssl req -new -key "$work/csr/$name.key" -subj "$subj" "$@" -out "$work/csr/$name.csr" 2>/dev/null
}
mkcsr device-ca "/O=keyline e2e/CN=Station A Device CA"
mkcsr service-ca "/O=keyline e2e/CN=Station A Service CA"
mkcsr station "/OU=keyline station/CN=station-a"
mkcsr code-signing "/O=keyline e2e/CN=keyline e2e firmware"
for p in device-ca service-ca station code-signing; do
  root sign --csr "$work/csr/$p.csr" --profile "$p" --out "$work/out/$p.pem"
  check "sign $p succeeds" [ "$rc" = 0 ]
  check "$p verifies against the root (openssl verify)" openssl verify -CAfile "$work/cer/root.pem" "$work/out/$p.pem"
  openssl x509 -in "$work/out/$p.pem" -noout -text >"$work/out/$p.txt"
  check "$p: issuer is the root" grep -q 'Issuer: O = keyline e2e, CN = keyline e2e Root' "$work/out/$p.txt"
  check "$p: key is the CSR's" cmp -s <(openssl x509 -in "$work/out/$p.pem" -noout -pubkey) \
    <(openssl ec -in "$work/csr/$p.key" -pubout 2>/dev/null)
  check "$p: basicConstraints and keyUsage critical" \
    bash -c "grep -q 'Basic Constraints: critical' '$work/out/$p.txt' && grep -q 'Key Usage: critical' '$work/out/$p.txt'"
done
for p in device-ca service-ca; do
  check "$p: CA:TRUE, pathlen:0" has 'CA:TRUE, pathlen:0' "$work/out/$p.txt"
  check "$p: keyCertSign and cRLSign" has 'Certificate Sign, CRL Sign$' "$work/out/$p.txt"
  check "$p: no extendedKeyUsage" bash -c "! grep -q 'Extended Key Usage' '$work/out/$p.txt'"
done
check "station: CA:FALSE" has 'CA:FALSE' "$work/out/station.txt"
check "station: digitalSignature only" grep -Eq '^ *Digital Signature$' "$work/out/station.txt"
checke "station: EKU clientAuth only" \
  'grep -A1 "Extended Key Usage" "$work/out/station.txt" | tail -n1 | grep -Eq "^ *TLS Web Client Authentication$"'
check "station: the keyline station policy" has 'Policy: 1.3.6.1.4.1.59999.2.1' "$work/out/station.txt"
check "station: subject OU=keyline station, CN=station-a" has 'Subject: OU = keyline station, CN = station-a' "$work/out/station.txt"
check "station: usable as a TLS client certificate" \
  openssl verify -purpose sslclient -CAfile "$work/cer/root.pem" "$work/out/station.pem"
if openssl verify -purpose sslserver -CAfile "$work/cer/root.pem" "$work/out/station.pem" >/dev/null 2>&1; then
  fail "station certificate passes as a TLS server certificate"
else
  pass "station certificate does not pass as a TLS server certificate"
fi
checke "code-signing: EKU codeSigning only" \
  'grep -A1 "Extended Key Usage" "$work/out/code-signing.txt" | tail -n1 | grep -Eq "^ *Code Signing$"'
check "code-signing: digitalSignature only" grep -Eq '^ *Digital Signature$' "$work/out/code-signing.txt"
check "code-signing: CA:FALSE" has 'CA:FALSE' "$work/out/code-signing.txt"
# A Device CA issued by the root can issue (pathlen 0 below the root's pathlen 1).
openssl ecparam -name prime256v1 -genkey -noout -out "$work/leaf.key" 2>/dev/null
openssl req -new -key "$work/leaf.key" -subj "/serialNumber=356938035643809" -out "$work/leaf.csr" 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' >"$work/leaf.ext"
openssl x509 -req -in "$work/leaf.csr" -CA "$work/out/device-ca.pem" -CAkey "$work/csr/device-ca.key" \
  -CAcreateserial -days 30 -extfile "$work/leaf.ext" -out "$work/leaf.pem" 2>/dev/null
check "a device certificate under the Device CA verifies to the root" \
  openssl verify -CAfile "$work/cer/root.pem" -untrusted "$work/out/device-ca.pem" "$work/leaf.pem"
check "four certificates issued, one file each under issued/" [ "$(issued_count)" = 4 ]

# --- refused CSRs: nothing issued, the log says so ---------------------------------------------
refused() {  # description expected-rc expected-error-code csr profile
  local what=$1 want=$2 code=$3 csr=$4 profile=$5 before
  before=$(issued_count)
  root sign --csr "$csr" --profile "$profile" --out "$work/out/refused.pem"
  checke "$what: exit $want, error $code" '[ "$rc" = "$want" ] && has "error $code" "$work/last.out"'
  checke "$what: nothing issued" '[ ! -e "$work/out/refused.pem" ] && [ "$(issued_count)" = "$before" ]'
  check "$what: the log's last line is the refusal" \
    bash -c "tail -n1 '$work/cer/ceremony.log' | grep -q '\"phase\":\"outcome\",\"intent\":\"[0-9]*\",\"result\":\"refused\",\"error\":\"$code\"'"
  check "$what: its intent line names the CSR's SHA-256" \
    bash -c "tail -n2 '$work/cer/ceremony.log' | head -n1 | grep -q '\"phase\":\"intent\".*\"csr_sha256\":\"$(sha256sum "$csr" | cut -c1-64)\"'"
}
# A changed byte inside the signed part of a CSR (its CN): the self-signature no longer verifies.
mkcsr badsig "/CN=station-b"
openssl req -in "$work/csr/badsig.csr" -outform DER -out "$work/csr/badsig.der" 2>/dev/null
python3 - "$work/csr/badsig.der" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
i = b.find(b'station-b')
b[i] = ord('S')
open(p, 'wb').write(bytes(b))
PY
refused "a CSR with a bad signature" 3 1210 "$work/csr/badsig.der" station
mkcsr ca-station "/CN=station-b" -addext "basicConstraints=critical,CA:true"
refused "a station CSR asking for CA:true" 5 7010 "$work/csr/ca-station.csr" station
check "  ... and the refusal names CA:true" has 'CA:true' "$work/last.out"
mkcsr country "/C=DE/CN=station-b"
refused "a subject attribute the station profile does not allow" 5 7010 "$work/csr/country.csr" station
check "  ... and the refusal names the attribute" has 'X520.Country' "$work/last.out"
mkcsr san "/CN=station-b" -addext "subjectAltName=DNS:backupdb.example"
refused "a CSR asking for a subjectAltName" 5 7010 "$work/csr/san.csr" station
refused "the Device CA's key asked for again as a station" 5 7010 "$work/csr/device-ca.csr" code-signing

# --- log verify --------------------------------------------------------------------------------
log=$work/cer/ceremony.log
cer "$work/root-hsm" "$work/cer" log verify
checke "log verify: the ceremony's log verifies" '[ "$rc" = 0 ] && has "^ok: " "$work/last.out"'
lines=$(wc -l <"$log")
check "log: an intent and an outcome per operation ($lines lines)" [ "$lines" = 20 ]
cer "$work/root-hsm" "$work/cer" log show
check "log show prints every operation" [ "$(grep -c '^#' "$work/last.out")" = "$lines" ]
tampered() {  # description expected-line expected-reason file
  cer "$work/root-hsm" "$work/cer" log verify --log "$4"
  check "log verify: $1 -> exit 3" [ "$rc" = 3 ]
  check "log verify: $1 -> names line $2 ($3)" grep -q "^line $2: .*$3" "$work/last.out"
}
sed '4s/"result":"issued"/"result":"failed"/' "$log" >"$work/tamper/changed.log"
tampered "a changed line" 4 "signature does not verify" "$work/tamper/changed.log"
sed '5d' "$log" >"$work/tamper/dropped.log"
tampered "a dropped line" 5 "sequence 5 dropped" "$work/tamper/dropped.log"
awk 'NR==5{a=$0; next} NR==6{print; print a; next} {print}' "$log" >"$work/tamper/reordered.log"
tampered "a reordered line" 5 "reordered" "$work/tamper/reordered.log"
# Another root's ceremony: its line 3 (signed by that root's key) put in place of ours.
cer "$work/other-hsm" "$work/other" init-root --subject-cn "keyline e2e Root" --organization "keyline e2e" --days 7300
cer "$work/other-hsm" "$work/other" sign --csr "$work/csr/station.csr" --profile station --out "$work/out/other-station.pem"
check "a second ceremony on another root token" [ "$rc" = 0 ]
awk -v f="$work/other/ceremony.log" 'BEGIN{while((getline l < f) > 0) o[++n]=l} NR==3{print o[3]; next} {print}' "$log" \
  >"$work/tamper/foreign.log"
tampered "a line signed by another key" 3 "signed by another key" "$work/tamper/foreign.log"
cer "$work/root-hsm" "$work/cer" log verify --head "$(tail -n1 "$log" | tr -d '\n' | sha256sum | cut -c1-64)"
check "log verify --head: the written-down head matches" [ "$rc" = 0 ]
head -n -2 "$log" >"$work/tamper/cut.log"
cer "$work/root-hsm" "$work/cer" log verify --log "$work/tamper/cut.log" --head "$(tail -n1 "$log" | tr -d '\n' | sha256sum | cut -c1-64)"
checke "log verify --head: lines cut off at the end are found" '[ "$rc" = 3 ] && has "cut off" "$work/last.out"'
# A ceremony whose log was tampered with signs nothing and adds nothing.
cp -a "$work/cer" "$work/cer-tampered"
cp "$work/tamper/dropped.log" "$work/cer-tampered/ceremony.log"
cer "$work/root-hsm" "$work/cer-tampered" sign --csr "$work/csr/code-signing.csr" --profile code-signing \
  --out "$work/out/after-tamper.pem"
checke "sign on a tampered log is refused (exit 3, 7020)" '[ "$rc" = 3 ] && has "error 7020" "$work/last.out"'
checke "  ... nothing issued, nothing appended" \
  '[ ! -e "$work/out/after-tamper.pem" ] && cmp -s "$work/cer-tampered/ceremony.log" "$work/tamper/dropped.log"'

# --- a ceremony directory others could change is refused before anything is signed ------------
cp -a "$work/cer" "$work/cer-open" && chmod 0770 "$work/cer-open"
cer "$work/root-hsm" "$work/cer-open" sign --csr "$work/csr/station.csr" --profile station --out "$work/out/open.pem"
checke "a group-writable ceremony directory is refused (exit 2, 7030)" \
  '[ "$rc" = 2 ] && has "error 7030" "$work/last.out" && [ ! -e "$work/out/open.pem" ]'
mkdir -p "$work/shared" && cp -a "$work/cer" "$work/shared/cer" && chmod 0777 "$work/shared"
cer "$work/root-hsm" "$work/shared/cer" sign --csr "$work/csr/station.csr" --profile station --out "$work/out/open.pem"
checke "a ceremony directory under a world-writable parent is refused (exit 2, 7030)" \
  '[ "$rc" = 2 ] && has "error 7030" "$work/last.out" && [ ! -e "$work/out/open.pem" ]'
chmod 0700 "$work/shared"

# --- the PIN: from a file or the ceremony's own environment, never a flag, never the station's variables
plain() { SOFTHSM2_CONF=$work/root-hsm/softhsm2.conf "$bin" --dir "$work/cer" --hsm-module "$module" "$@" >"$work/last.out" 2>&1; rc=$?; }
plain --pin "$(cat "$work/root-hsm/user.pin")" sign --csr "$work/csr/station.csr" --profile station --out "$work/out/p1.pem"
check "a --pin flag does not exist (exit 2)" [ "$rc" = 2 ]
KEYLINE_HSM_PIN=$(cat "$work/root-hsm/user.pin") KEYLINE_HSM_PIN_FILE=$work/root-hsm/user.pin \
  plain sign --csr "$work/csr/station.csr" --profile station --out "$work/out/p2.pem"
checke "the station's KEYLINE_HSM_PIN(_FILE) does not open the root token (exit 2)" \
  '[ "$rc" = 2 ] && [ ! -e "$work/out/p2.pem" ]'
KEYLINE_ROOT_PIN_FILE=$work/root-hsm/user.pin plain sign --csr "$work/csr/station.csr" --profile station \
  --out "$work/out/p3.pem"
checke "KEYLINE_ROOT_PIN_FILE opens it (a renewal: same key, same subject)" '[ "$rc" = 0 ] && [ -s "$work/out/p3.pem" ]'

# --- a failure after the root signed still names what it signed -----------------------------------
root sign --csr "$work/csr/code-signing.csr" --profile code-signing --out "$work/no-such-dir/cs.pem"
serial=$(tail -n1 "$work/cer/ceremony.log" | sed -n 's/.*"result":"failed","serial":"\([0-9a-f]*\)".*/\1/p')
checke "an --out that cannot be written: exit 1, the outcome says failed and names the serial" \
  '[ "$rc" = 1 ] && [ -n "$serial" ] && [ -s "$work/cer/issued/$serial.pem" ]'
cer "$work/root-hsm" "$work/cer" log verify
check "  ... and the log still verifies" [ "$rc" = 0 ]

# --- no run tried a network socket -------------------------------------------------------------
strace -f -qq -e trace=%network -o "$work/trace/control.trace" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9' 2>/dev/null
check "strace control: a program that opens a TCP socket shows socket(AF_INET" has 'socket(AF_INET' "$work/trace/control.trace"
check "strace ran around every keyline-ceremony run ($runs)" [ "$(find "$work/trace" -name 'run-*.trace' | wc -l)" = "$runs" ]
if grep -E 'socket\(AF_(INET|INET6|PACKET|NETLINK)|connect\(|sendto\(|bind\(' "$work"/trace/run-*.trace; then
  fail "a keyline-ceremony run attempted a network socket"
else
  pass "no keyline-ceremony run attempted a network socket (strace -f, $runs runs)"
fi

echo "ceremony e2e: $fails failure(s)"
[ "$fails" = 0 ]
