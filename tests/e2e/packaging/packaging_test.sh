#!/usr/bin/env bash
# The Debian packages (cmake/Packaging.cmake) end to end: cpack from this build tree (already built by the
# test command), each package unpacked with dpkg-deb -x into one temporary root, every program's --help run
# from there, the example configs read by their programs, the demo run on the unpacked binaries, lintian
# without errors, and systemd-analyze verify on the units with their hardening and credentials checked.
set -euo pipefail
src=$KEYLINE_SOURCE_DIR bin=$KEYLINE_BINARY_DIR work=$E2E_DIR
rm -rf "$work" && mkdir -p "$work/root"
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }

# Packages: the same cpack run as scripts/package.sh, into the test's own directory.
(cd "$bin" && cpack -G DEB -B "$work/cpack" -D CPACK_OUTPUT_FILE_PREFIX="$work/packages") >"$work/cpack.log" 2>&1 ||
  { tail -30 "$work/cpack.log"; fail "cpack -G DEB"; }
mapfile -t debs < <(ls "$work"/packages/*.deb)
programs=()
for p in station ceremony device backupdb kps service recovery; do
  [ -x "$bin/bin/keyline-$p" ] && programs+=("keyline-$p")
done
[ ${#debs[@]} -eq $((${#programs[@]} + 1)) ] || fail "${#debs[@]} packages for ${#programs[@]} programs + common"
ok "${#debs[@]} packages: $(cd "$work/packages" && echo *.deb)"

for d in "${debs[@]}"; do
  dpkg-deb -x "$d" "$work/root"
  name=$(dpkg-deb -f "$d" Package)
  mkdir -p "$work/control/$name" && dpkg-deb -e "$d" "$work/control/$name"
  [ -f "$work/root/usr/share/doc/$name/copyright" ] || fail "$name: no copyright"
  [ -f "$work/root/usr/share/doc/$name/changelog.Debian.gz" ] || fail "$name: no changelog.Debian.gz"
  for script in postinst prerm postrm; do
    [ ! -f "$work/control/$name/$script" ] || sh -n "$work/control/$name/$script" || fail "$name: $script is not sh"
  done
  # Every file under /etc is a conffile, so an upgrade keeps what the operator changed.
  while read -r f; do
    grep -qx "${f#.}" "$work/control/$name/conffiles" 2>/dev/null || fail "$name: ${f#.} is not a conffile"
  done < <(dpkg-deb -c "$d" | awk '{print $6}' | grep '^\./etc/.*[^/]$' || true)
done
ok "every package has its copyright and changelog; /etc files are conffiles"

for p in "${programs[@]}"; do
  exe=$work/root/usr/bin/$p
  [ -x "$exe" ] || fail "$p not in the unpacked root"
  "$exe" --help >"$work/$p.help" 2>&1 || fail "$p --help exited $?"
  grep -q "$p" "$work/$p.help" || fail "$p --help does not name the program"
  [ -s "$work/root/usr/share/man/man1/$p.1.gz" ] || fail "$p has no man page"
  zcat "$work/root/usr/share/man/man1/$p.1.gz" | grep -q '^\.SH OPTIONS\|^\.SH DESCRIPTION' || fail "$p man page is empty"
  deps=$(dpkg-deb -f "$work/packages/${p}_"*.deb Depends)
  [[ "$deps" == *libc6* && "$deps" == *keyline-common* ]] || fail "$p Depends: $deps"
done
ok "--help and man page of ${programs[*]}; Depends name libc6 and keyline-common"

# The example configs as shipped: each is read by its program (a syntax error or a value of the wrong type
# fails there, exit 2), and every key is an option of the command its section names (the --help of that
# command lists it), so none is dropped or refused when the operator starts the unit.
cfg=$work/root/etc/keyline
check_config() {  # program config command
  local exe=$work/root/usr/bin/$1 key
  "$exe" --config "$cfg/$2" "$3" --help >"$work/config-$2.help" 2>&1 ||
    { cat "$work/config-$2.help"; fail "$2 not read by $1 $3"; }
  [ "$(sed -n 's/^\[\(.*\)\]$/\1/p' "$cfg/$2")" = "$3" ] || fail "$2: its one section is not [$3]"
  while read -r key; do
    grep -qE -- "--$key( |,|=|$)" "$work/config-$2.help" || fail "$2: \"$key\" is no option of $1 $3"
  done < <(sed -n 's/^\([a-z0-9-]*\) *=.*/\1/p' "$cfg/$2")
}
[ ! -x "$work/root/usr/bin/keyline-backupdb" ] || { check_config keyline-backupdb backupdb.toml serve; check_config keyline-backupdb witness.toml witness; }
[ ! -x "$work/root/usr/bin/keyline-kps" ] || check_config keyline-kps kps.toml serve
[ ! -x "$work/root/usr/bin/keyline-service" ] || check_config keyline-service service.toml serve
# The station's config and the line profile: `run` reads both before it opens the database, so with the
# database pointed nowhere (the environment wins over the file) it must fail on that (1301), not on them
# (1450); a profile with a key the station does not know fails on the profile.
if [ -x "$work/root/usr/bin/keyline-station" ]; then
  station_run() { KEYLINE_STATION_DB="host=$work/no-pg dbname=none" "$work/root/usr/bin/keyline-station" \
    --config "$cfg/station-line1.toml" run --profile "$1" >"$work/station-run.out" 2>&1 || true; }
  station_run "$cfg/line-line1.toml"
  grep -q 'error 1301' "$work/station-run.out" || { cat "$work/station-run.out"; fail "station-line1.toml or line-line1.toml refused"; }
  sed 's/^concurrency = .*/concurrency = 8\nno_such_key = 1/' "$cfg/line-line1.toml" >"$work/bad-line.toml"
  station_run "$work/bad-line.toml"
  grep -q 'error 1450.*no_such_key' "$work/station-run.out" || { cat "$work/station-run.out"; fail "a bad line profile was not refused"; }
fi
ok "example configs read by their programs; every key an option of its command"

# systemd units: verify, hardening and secrets only through LoadCredential= (never a flag).
units=("$work"/root/lib/systemd/system/*.service)
[ ${#units[@]} -ge 4 ] || fail "only ${#units[@]} units"
# verify --root would look for the system's own targets in the root too; instead each unit is verified
# with its programs' paths pointed into the root (verify checks they exist), and a setting it cannot
# parse is only a warning, so any output fails.
mkdir -p "$work/units"
for u in "${units[@]}"; do
  sed "s|/usr/bin/|$work/root/usr/bin/|g" "$u" >"$work/units/$(basename "$u")"
done
(cd "$work" && systemd-analyze verify --man=no "$work"/units/*.service) >"$work/verify.log" 2>&1 ||
  { cat "$work/verify.log"; fail "systemd-analyze verify"; }
[ ! -s "$work/verify.log" ] || { cat "$work/verify.log"; fail "systemd-analyze verify printed warnings"; }
for u in "${units[@]}"; do
  n=$(basename "$u")
  for want in 'ProtectSystem=strict' 'NoNewPrivileges=yes' 'PrivateTmp=yes' 'ProtectHome=yes' 'CapabilityBoundingSet=$' \
    '^User=keyline-' '^StateDirectory=keyline/' '^LoadCredential='; do
    grep -q "$want" "$u" || fail "$n lacks $want"
  done
  if grep '^ExecStart=' "$u" | grep -Eqi -- '-(pin|password)([ =]|$)|pin-file|password-file'; then
    fail "$n passes a secret on its command line"
  fi
  user=$(sed -n 's/^User=//p' "$u")
  grep -rqw "$user" "$work"/control/*/postinst || fail "$n: no postinst makes user $user"
done
ok "systemd-analyze verify clean on ${#units[@]} units; hardened; secrets through LoadCredential=; users made by postinst"
# A unit that opens a SoftHSM2 token has a token directory of its own (the attacker review: another
# service's user could plant a token of its label in the shared /var/lib/softhsm/tokens).
for u in "${units[@]}"; do
  n=$(basename "$u")
  ! grep -v '^#' "$u" | grep -q '/var/lib/softhsm/tokens' || fail "$n uses the shared SoftHSM2 token directory"
  conf=$(sed -n 's/^Environment=SOFTHSM2_CONF=//p' "$u" | sed 's/%i/line1/')
  [ -n "$conf" ] || continue
  [ -f "$work/root$conf" ] || fail "$n: $conf is in no package"
  dir=$(sed -n 's/^directories.tokendir *= *//p' "$work/root$conf")
  state=$(sed -n 's/^StateDirectory=//p' "$u" | sed 's/%i/line1/g')
  case " $state " in *" ${dir#/var/lib/} "*) ;; *) fail "$n: token directory $dir is not among StateDirectory=$state" ;; esac
done
ok "each SoftHSM2 unit has its own token directory under its StateDirectory"

lintian --fail-on error --tag-display-limit 0 "${debs[@]}" >"$work/lintian.log" 2>&1 ||
  { cat "$work/lintian.log"; fail "lintian found errors"; }
ok "lintian: no errors ($(grep -c '^W:' "$work/lintian.log" || true) warnings, log $work/lintian.log)"

# The demo on the unpacked binaries: the line, recovery, KPS and service steps, from /usr/bin of the root.
dir=$(realpath --relative-to="$src" "$work/demo")
(cd "$src" && LINE_BIN="$work/root/usr/bin" KEYLINE_SKIP_SETUP=1 KEYLINE_DEMO_DIR="$dir" scripts/demo.sh 2) \
  >"$work/demo.log" 2>&1 || { tail -40 "$work/demo.log"; fail "demo.sh on the packaged binaries"; }
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); sys.exit(0 if s["devices_published"] == 2 else 1)' \
  "$work/demo/summary.json" || fail "demo summary: not 2 records published"
ok "demo.sh on $work/root/usr/bin: 2 devices personalized and published"
