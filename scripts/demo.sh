#!/usr/bin/env bash
# The main job (docs/design.md section 8): a whole line on this machine.
#   installs what is missing and builds; starts a private PostgreSQL and SoftHSM2 tokens under
#   .keyline/demo/; runs the ceremony on a root token of its own (keyline-ceremony init-root, then signs
#   the station's Device CA, station and service CA CSRs), the station's keys on its own token under that
#   root (keys init --offline-root, keys install-cert); starts the public DB server; makes N
#   emulated devices and personalizes them through the station; wipes one device's flash and restores it
#   with the recovery tool; moves a key from device 0 to device 1 through keyline-kps; prints a summary
#   and writes .keyline/demo/summary.json; stops everything.
#
#   scripts/demo.sh [N]     N devices (default 8, or $KEYLINE_DEMO_DEVICES)
# Every run starts from a clean .keyline/demo/ (the previous run's processes are stopped first).
# For the test suite: KEYLINE_DEMO_DIR (another directory, relative to the repo root), KEYLINE_SKIP_SETUP=1
# (binaries already built; LINE_BIN names their directory).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
n=${1:-${KEYLINE_DEMO_DEVICES:-8}}
[[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 2 ] || { echo "demo: N must be a number >= 2" >&2; exit 2; }

[ -n "${KEYLINE_SKIP_SETUP:-}" ] || "$top/scripts/setup.sh"

demo=${KEYLINE_DEMO_DIR:-.keyline/demo}
# A previous run that was killed hard may have left its cluster or servers running.
if [ -f "$demo/pids" ]; then
  while read -r p; do kill "$p" 2>/dev/null || true; done <"$demo/pids"
fi
[ -d "$demo/pg" ] && "$top/scripts/pg.sh" stop "$demo/pg" >/dev/null 2>&1 || true
rm -rf "$demo"
mkdir -p "$demo/certs"

# shellcheck source=lib/line.sh
source "$top/scripts/lib/line.sh"
# shellcheck source=lib/service.sh
source "$top/scripts/lib/service.sh"
finish() {
  local rc=$?
  line_down
  rm -f "$demo/pids"
  [ $rc -eq 0 ] || echo "demo: FAILED (exit $rc); logs are in $demo/logs/" >&2
  exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

step() { printf '\n== %s\n' "$*"; }

step "1/7 starting PostgreSQL, SoftHSM, keys, the public DB and $n emulated devices"
# The root on a root token of its own under $demo/root-hsm, opened only by keyline-ceremony; the station's
# token and processes never see it (docs/ceremony.md).
# Genuine chips only (docs/channel.md): the fleet's chips get a vendor identity, the station checks it,
# personalizes over SCP11a and has the chip generate and attest its own keys.
LINE_ROOT=ceremony LINE_CHANNEL=scp11a LINE_KEY_SOURCE=device line_up "$demo" "$n"
printf '%s\n' "${LINE_PIDS[@]}" >"$demo/pids"

step "2/7 personalizing $n devices through keyline-station"
line_personalize | tee "$demo/personalize.jsonl"
personalized=$(grep -c '"done":true' "$demo/personalize.jsonl" || true)
[ "$personalized" -eq "$n" ] || { echo "demo: only $personalized of $n devices personalized" >&2; exit 1; }

# What the public DB now holds, fetched as any service server would.
published=0
certs=()
while read -r chip; do
  if curl -sf --cacert "$demo/pki/tls-ca.pem" -H 'Accept: application/x-pem-file' \
      "$LINE_BACKUPDB_URL/v1/records/$chip/certificate" -o "$demo/certs/$chip.pem"; then
    published=$((published + 1))
    certs+=("$demo/certs/$chip.pem")
  fi
done < <(sed -n 's/.*"chip_id":"\([0-9A-F]*\)".*/\1/p' "$demo/personalize.jsonl")
for c in "${certs[@]}"; do
  openssl verify -CAfile "$demo/pki/root.pem" -untrusted "$demo/pki/device-ca.pem" "$c" >/dev/null
done
echo "public DB holds $published records; every identity certificate verifies with openssl against the root"

step "3/7 the owner of device 0 loses its flash"
dev0=${LINE_DEVICE_DIRS[0]}
addr0=${LINE_DEVICES[0]}
"$LINE_BIN/keyline-device" boot --dir "$dev0" >"$demo/boot-before.txt"
cat "$demo/boot-before.txt"
"$LINE_BIN/keyline-device" wipe-flash --dir "$dev0"
if "$LINE_BIN/keyline-device" boot --dir "$dev0" >/dev/null 2>&1; then
  echo "demo: device still boots after the wipe" >&2
  exit 1
fi
echo "device $addr0 no longer boots"

step "4/7 keyline-recovery restores it from the public DB"
"$LINE_BIN/keyline-recovery" restore --device "$addr0" --db "$LINE_BACKUPDB_URL" \
  --ca "$demo/pki/tls-ca.pem" --trust "$demo/pki/root.pem" \
  --log-key-file "$LINE_LOG_KEY_FILE" --log-state "$demo/log-state" | tee "$demo/recovery.txt"
"$LINE_BIN/keyline-device" boot --dir "$dev0" >"$demo/boot-after.txt"
cat "$demo/boot-after.txt"

field() { sed -n "s/^$1 //p" "$2"; }
chip=$(field chip_id "$demo/boot-before.txt")
imei_before=$(field imei "$demo/boot-before.txt")
imei_after=$(field imei "$demo/boot-after.txt")
match=false
if [ -n "$imei_before" ] && [ "$imei_before" = "$imei_after" ] &&
   [ "$(grep -v '^chip_id\|^imei' "$demo/boot-before.txt")" = "$(grep -v '^chip_id\|^imei' "$demo/boot-after.txt")" ]; then
  match=true
fi

step "5/7 a key moves from device 0 to device 1 through keyline-kps, which never sees it"
dev1=${LINE_DEVICE_DIRS[1]}
kps_label=user-key
kps_source=$(field chip_id <("$LINE_BIN/keyline-device" status --dir "$dev0"))
kps_target=$(field chip_id <("$LINE_BIN/keyline-device" status --dir "$dev1"))
kps_ok=false
kps_transfer() {
  local dev="$LINE_BIN/keyline-device" kps=(--kps "$LINE_KPS_URL" --ca "$demo/pki/tls-ca.pem" --kps-key "$LINE_KPS_KEY")
  "$dev" key-new --dir "$dev0" --label "$kps_label" || return 1
  # The source's own policy: it seals this label for this target only (the KPS's policy is checked too).
  "$dev" kps policy add --dir "$dev0" --target "$kps_target" --label "$kps_label" || return 1
  "$dev" kps request --dir "$dev1" "${kps[@]}" --from "$kps_source" --label "$kps_label" || return 1
  "$dev" kps serve-once --dir "$dev0" "${kps[@]}" || return 1
  "$dev" kps receive --dir "$dev1" "${kps[@]}"
}
if line_kps_up --allow "$kps_source:$kps_target:$kps_label"; then
  printf '%s\n' "${LINE_PIDS[@]}" >"$demo/pids"
  if kps_transfer 2>&1 | tee "$demo/kps.txt"; then kps_ok=true; fi
fi
# The KCV (first 3 bytes of AES-ECB(key, 0^16)) shows both devices hold the same key without showing it.
kcv_source=$("$LINE_BIN/keyline-device" key-kcv --dir "$dev0" --label "$kps_label" 2>/dev/null || true)
kcv_target=$("$LINE_BIN/keyline-device" key-kcv --dir "$dev1" --label "$kps_label" 2>/dev/null || true)
[ -n "$kcv_source" ] && [ "$kcv_source" = "$kcv_target" ] || kps_ok=false
echo "key check values: source $kcv_source, target $kcv_target"

step "6/7 keyline-service: an item and a module pushed to a shipped device over SCP03 (docs/service.md)"
svc_dev=${LINE_DEVICE_DIRS[$((n - 1))]}
svc_chip=$(field chip_id <("$LINE_BIN/keyline-device" status --dir "$svc_dev"))
svc_ok=false
svc_module_version=0
service_session() {
  service_up || return 1
  printf '%s\n' "${LINE_PIDS[@]}" >"$demo/pids"
  line_code_signing_ceremony "$demo/service/cs" || return 1
  printf 'apn=internet.example\n' >"$demo/service/apn.bin"
  printf 'radio firmware 3\n' >"$demo/service/radio.body"
  field imei <("$LINE_BIN/keyline-device" status --dir "$svc_dev") >"$demo/service/imeis.txt"
  service_cli module sign --in "$demo/service/radio.body" --name radio --version 3 --cert "$demo/service/cs/cs.pem" \
    --out "$demo/service/radio.mod" || return 1
  service_cli campaign --name demo-apn --item "0F01=$demo/service/apn.bin" --imeis "$demo/service/imeis.txt" || return 1
  service_cli campaign --name demo-radio --module "$demo/service/radio.mod" --trust "$demo/pki/root.pem" \
    --imeis "$demo/service/imeis.txt" || return 1
  "$LINE_BIN/keyline-device" service-agent --dir "$svc_dev" --service "$LINE_SERVICE_URL" --ca "$demo/pki/tls-ca.pem" \
    >"$demo/service/session.json" || return 1
  "$LINE_BIN/keyline-device" boot --dir "$svc_dev" >"$demo/service/boot.txt"
}
mkdir -p "$demo/service"
if service_session 2>>"$demo/logs/service-demo.log"; then
  grep -q '"ok":true' "$demo/service/session.json" && svc_ok=true
  grep -q '"name":"radio","version":3' "$demo/service/session.json" && svc_module_version=3
fi
echo "service session: ok $svc_ok, chip $svc_chip, module radio version $svc_module_version"

step "7/7 summary"
ceremony_ok=false
line_ceremony log verify >"$demo/ceremony-verify.txt" 2>&1 && ceremony_ok=true
ceremony_head=$(sed -n 's/.*head[^0-9a-f]*\([0-9a-f]\{64\}\).*/\1/p' "$demo/ceremony-verify.txt" | tail -n1)
certs_json=$(printf '"%s",' "${certs[@]}")
# The public DB's transparency log as a monitor sees it: the latest signed checkpoint and the pinned key.
# Step 4's restore verified the record's inclusion proof against a checkpoint signed by that key
# (the demo stops there otherwise).
mkdir -p "$demo/log"
curl -sf --cacert "$demo/pki/tls-ca.pem" "$LINE_BACKUPDB_URL/v1/log/checkpoint" -o "$demo/log/checkpoint.txt"
log_origin=$(cut -d+ -f1 "$LINE_LOG_KEY_FILE")
records_logged=$(sed -n 2p "$demo/log/checkpoint.txt")
# The channel and key source every device was personalized with, as the station reported them.
channel=$(sed -n 's/.*"channel":"\([a-z0-9]*\)".*/\1/p' "$demo/personalize.jsonl" | sort -u | paste -sd, -)
key_source=$(sed -n 's/.*"key_source":"\([a-z]*\)".*/\1/p' "$demo/personalize.jsonl" | sort -u | paste -sd, -)
cat >"$demo/summary.json" <<JSON
{
  "devices_personalized": $personalized,
  "devices_published": $published,
  "root_ca": "$demo/pki/root.pem",
  "device_ca": "$demo/pki/device-ca.pem",
  "channel": "$channel",
  "key_source": "$key_source",
  "chip_vendor_ca": "$KEYLINE_CHIP_VENDORS",
  "ceremony": {"root_token": "$LINE_ROOT_HSM", "dir": "$LINE_CEREMONY_DIR", "log": "$LINE_CEREMONY_DIR/ceremony.log", "log_head": "$ceremony_head", "log_verified": $ceremony_ok},
  "identity_certs": [${certs_json%,}],
  "recovery": {"chip_id": "$chip", "imei_before": "$imei_before", "imei_after": "$imei_after", "key_fingerprints_match": $match},
  "kps_transfer": {"ok": $kps_ok, "source": "$kps_source", "target": "$kps_target", "label": "$kps_label", "kcv_source": "$kcv_source", "kcv_target": "$kcv_target"},
  "log": {"origin": "$log_origin", "checkpoint": "$demo/log/checkpoint.txt", "log_key": "$LINE_LOG_KEY_FILE", "records_logged": $records_logged, "recovery_inclusion_verified": true},
  "service_session": {"ok": $svc_ok, "chip_id": "$svc_chip", "module_version": $svc_module_version}
}
JSON
printf '  %-28s %s\n' "devices personalized" "$personalized of $n" "records in the public DB" "$published" \
  "root certificate" "$demo/pki/root.pem (root key on $LINE_ROOT_HSM, never on the station)" \
  "Device CA certificate" "$demo/pki/device-ca.pem" "ceremony log" "$LINE_CEREMONY_DIR/ceremony.log (verified $ceremony_ok)" \
  "identity certificates" "$demo/certs/" "restored device" "chip $chip, IMEI $imei_before -> $imei_after" \
  "channel, key source" "$channel, $key_source (chip vendor ${KEYLINE_CHIP_VENDORS:-none})" \
  "keys identical after restore" "$match" \
  "key moved through the KPS" "$kps_ok ($kps_label, KCV $kcv_source -> $kcv_target)" \
  "transparency log" "$records_logged records in $log_origin ($demo/log/checkpoint.txt)" \
  "service session" "$svc_ok (chip $svc_chip, module radio $svc_module_version, $demo/service/session.json)" \
  "summary" "$demo/summary.json"
[ "$channel" = scp11a ] && [ "$key_source" = device ] ||
  { echo "demo: devices were personalized over '$channel' with key source '$key_source', not scp11a/device" >&2; exit 1; }
[ "$match" = true ] || { echo "demo: the restored device differs from the original" >&2; exit 1; }
[ "$kps_ok" = true ] || { echo "demo: the key transfer through the KPS failed (see $demo/kps.txt, $demo/logs/kps.log)" >&2; exit 1; }
[ "$svc_ok" = true ] || { echo "demo: the service session failed (see $demo/logs/service-demo.log, $demo/logs/service.out)" >&2; exit 1; }
