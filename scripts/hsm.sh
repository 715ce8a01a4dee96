#!/usr/bin/env bash
# A private SoftHSM2 token: its own SOFTHSM2_CONF and token directory, generated PINs (files 0600).
#
#   scripts/hsm.sh init DIR [LABEL]  creates DIR/softhsm2.conf, DIR/tokens/, the token, DIR/{so.pin,user.pin,label,module}
#                                    (no-op when the token already exists)
#   scripts/hsm.sh remove DIR        deletes the token directory and PIN files
#   scripts/hsm.sh env DIR           prints "export SOFTHSM2_CONF=..." for eval
# The same script serves tests and the demo's embedded default under .keyline/. For a real HSM,
# point the station at its PKCS#11 module instead (docs/operations.md).
set -euo pipefail
cmd=${1:-}
dir=${2:-}
label=${3:-keyline}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 init|remove|env DIR [LABEL]" >&2; exit 2; }

module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
         /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so; do
  [ -f "$m" ] && { module=$m; break; }
done

case "$cmd" in
  init)
    [ -n "$module" ] || { echo "hsm.sh: SoftHSM2 not installed (run scripts/setup.sh)" >&2; exit 4; }
    mkdir -p "$dir/tokens"
    chmod 700 "$dir" "$dir/tokens"
    dir=$(cd "$dir" && pwd)
    cat > "$dir/softhsm2.conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
    export SOFTHSM2_CONF="$dir/softhsm2.conf"
    printf '%s\n' "$module" > "$dir/module"
    printf '%s\n' "$label" > "$dir/label"
    if softhsm2-util --show-slots 2>/dev/null | grep -q "Label:.*\b$label\b"; then
      echo "hsm.sh: token '$label' already present in $dir"
      exit 0
    fi
    umask 077
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' | head -c 16 > "$dir/so.pin"; echo >> "$dir/so.pin"
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' | head -c 16 > "$dir/user.pin"; echo >> "$dir/user.pin"
    # PINs go to softhsm2-util through its arguments: it has no other way. The process is ours and
    # short-lived on a single-user machine; keyline's own programs read PINs from files or env only.
    softhsm2-util --init-token --free --label "$label" --so-pin "$(cat "$dir/so.pin")" --pin "$(cat "$dir/user.pin")" >/dev/null
    echo "hsm.sh: SoftHSM2 token '$label' ready in $dir (module $module)"
    ;;
  remove)
    rm -rf "$dir/tokens" "$dir/so.pin" "$dir/user.pin" "$dir/softhsm2.conf" "$dir/label" "$dir/module"
    ;;
  env)
    echo "export SOFTHSM2_CONF=$(cd "$dir" && pwd)/softhsm2.conf"
    ;;
  *) echo "usage: $0 init|remove|env DIR [LABEL]" >&2; exit 2 ;;
esac
