# Shared by the e2e tests (sourced): the secrets of a line, looked for in every program's log.
# secrets_collect DEVICE_DIR...  adds to SECRETS_NEEDLES what each emulated device holds: its chip key
#   (hex, HEX) and, opened from its sealed backup with that key as the chip does at boot
#   (keyline-test-unseal, $LINE_BIN), its PKCS#8 identity key, transport and communication keys in hex,
#   HEX and base64 (the PKCS#8 also as PEM lines); kept in the variable only, never in a file.
# secrets_add VALUE...           adds other secrets (PINs, passwords).
# secrets_scan FILE...           prints "a secret appears in: FILES" per needle found; returns how many.
# secrets_plant_check FILE       plants one needle in a copy of FILE and checks secrets_scan finds it
#   (a scan that can never fail proves nothing); returns 1 when it does not.
SECRETS_NEEDLES=()
SECRETS_DEVICES=0

secrets_add() {
  local v
  for v in "$@"; do [ -z "$v" ] || SECRETS_NEEDLES+=("$v"); done
}

secrets_collect() {
  local d k dump dgi enc value line
  for d in "$@"; do
    [ -f "$d/secure/chip.key" ] || continue
    k=$(od -An -tx1 -v "$d/secure/chip.key" | tr -d ' \n')
    secrets_add "$k" "$(tr a-f A-F <<<"$k")"
    dump=$("${LINE_BIN:?}/keyline-test-unseal" "$d" 2>/dev/null) || continue  # not personalized
    SECRETS_DEVICES=$((SECRETS_DEVICES + 1))
    while read -r dgi enc value; do
      secrets_add "$value"
      [ "$enc" != hex ] || secrets_add "$(tr a-f A-F <<<"$value")"
      if [ "$dgi" = 8101 ] && [ "$enc" = b64 ]; then
        while read -r line; do secrets_add "$line"; done < <(fold -w64 <<<"$value")
      fi
    done <<<"$dump"
  done
}

secrets_scan() {
  local n hits found=0
  for n in "${SECRETS_NEEDLES[@]}"; do
    if hits=$(grep -rlF -- "$n" "$@" 2>/dev/null); then
      found=$((found + 1))
      echo "a secret appears in: $hits"
    fi
  done
  return "$((found > 255 ? 255 : found))"
}

secrets_plant_check() {
  local copy
  [ "${#SECRETS_NEEDLES[@]}" -gt 0 ] || return 1
  copy=$(mktemp)
  { cat "$1"; echo "${SECRETS_NEEDLES[$((${#SECRETS_NEEDLES[@]} - 1))]}"; } >"$copy"
  if secrets_scan "$copy" >/dev/null; then rm -f "$copy"; return 1; fi
  rm -f "$copy"
}
