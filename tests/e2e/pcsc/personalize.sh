# Four emulated devices personalized through PC/SC end to end (issue #13): a private pcscd with four vpcd
# readers, each device a card (`keyline-device serve --vpcd`), `keyline-station personalize --reader`.
# Every identity certificate verifies with openssl against the root, the public DB holds four records,
# and the invariants of docs/line.md hold.
source "$(dirname "$0")/common.sh"
dir=${1:?work dir}
rm -rf "$dir"
N=4
pcsc_line_up "$dir" "$N"
st="$LINE_BIN/keyline-station"
pki=$LINE_DIR/pki

# Three cards in now; the fourth reader is empty, and `personalize` waits for it (said on stderr).
for i in 0 1 2; do card_in "$i" --quiet; done
for i in 0 1 2; do wait_card_state "$i" present; done
"$st" personalize --json --reader 'keyline vpcd*' --card-wait 60 >"$LINE_DIR/logs/pers.out" 2>"$LINE_DIR/logs/pers.err" &
pers=$!
for _ in $(seq 300); do
  grep -q "waiting for a card in reader \"${PCSC_READERS[3]}\"" "$LINE_DIR/logs/pers.err" && break
  sleep 0.1
done
grep -q "waiting for a card in reader \"${PCSC_READERS[3]}\" (up to 60 s, --card-wait)" "$LINE_DIR/logs/pers.err" ||
  fail "no word of the wait for the empty reader: $(cat "$LINE_DIR/logs/pers.err")"
card_in 3 --quiet
rc=0; wait "$pers" || rc=$?
cat "$LINE_DIR/logs/pers.out" "$LINE_DIR/logs/pers.err"
[ "$rc" -eq 0 ] || fail "personalize --reader exited $rc"
[ "$(grep -c '"done":true' "$LINE_DIR/logs/pers.out")" -eq "$N" ] || fail "not $N devices done"
for i in $(seq 0 $((N - 1))); do
  grep -q "\"device\":\"pcsc:${PCSC_READERS[$i]}\",\"chip_id\":\"$(chip_of "$i")\"" "$LINE_DIR/logs/pers.out" ||
    fail "reader ${PCSC_READERS[$i]}: not the chip of device $i"
done
ok "personalize --reader: $N cards done, the empty reader waited for"

# Every identity certificate as the public DB serves it verifies against the root (through the Device CA).
mkdir -p "$LINE_DIR/certs"
for i in $(seq 0 $((N - 1))); do
  chip=$(chip_of "$i")
  der=$LINE_DIR/certs/$chip.der
  code=$(curl -s -o "$der" -w '%{http_code}' --cacert "$pki/tls-ca.pem" "$LINE_BACKUPDB_URL/v1/records/$chip/certificate")
  [ "$code" = 200 ] || fail "chip $chip: the public DB answered $code for its certificate"
  openssl x509 -inform DER -in "$der" -out "$LINE_DIR/certs/$chip.pem"
  out=$(openssl verify -CAfile "$pki/root.pem" -untrusted "$pki/device-ca.pem" "$LINE_DIR/certs/$chip.pem" 2>&1)
  [ "$out" = "$LINE_DIR/certs/$chip.pem: OK" ] || fail "chip $chip: $out"
done
ok "$N identity certificates verify with openssl against the root"
[ "$(line_public_sql "SELECT count(*) FROM records")" -eq "$N" ] || fail "the public DB does not hold $N records"
check_line_invariants "$N"
