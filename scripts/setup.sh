#!/usr/bin/env bash
# Installs the Debian packages keyline needs (only what is missing), then configures and builds build/.
# Idempotent: a second run installs nothing and only rebuilds what changed.
#   KEYLINE_EXTRA_PACKAGES="wrk nginx"  more packages for one caller (scripts/bench.sh asks for these)
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

packages=(
  build-essential cmake ninja-build pkg-config
  libbotan-2-dev libpoco-dev libpq-dev libcli11-dev libtomlplusplus-dev doctest-dev
  postgresql-15 softhsm2 libp11-kit-dev opensc
  openssl curl python3 libengine-pkcs11-openssl time
  strace  # integration_station_keys: the modes key files are created with
  chromium prometheus  # e2e.linepage: the line page in headless Chromium; promtool check metrics
  nginx  # integration_backupdb_cache: a standard HTTP cache (proxy_cache) in front of the public DB
  pcscd vsmartcard-vpcd pcsc-tools libpcsclite-dev  # PC/SC readers (docs/readers.md)
  clang libclang-rt-14-dev
  help2man lintian systemd  # the Debian packages: man pages, their check, systemd-analyze verify (scripts/package.sh)
)
# clang and its runtime build the libFuzzer targets that scripts/test.sh runs (build-fuzz). wrk only
# serves the benchmarks: scripts/bench.sh passes it (and nginx) in KEYLINE_EXTRA_PACKAGES.
# shellcheck disable=SC2206
packages+=(${KEYLINE_EXTRA_PACKAGES:-})

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # policy-rc.d keeps Debian from starting the system-wide services we do not use (PostgreSQL, pcscd,
  # nginx on port 80): every program here runs its own private instance.
  rcd=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    rcd=1
  fi
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$rcd" ] || $sudo rm -f /usr/sbin/policy-rc.d
else
  echo "setup: all ${#packages[@]} packages present, nothing installed"
fi

build_type=${KEYLINE_BUILD_TYPE:-Release}
build_dir=${KEYLINE_BUILD_DIR:-build}
if [ ! -f "$build_dir/build.ninja" ]; then
  echo "setup: configuring $build_dir ($build_type)"
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" ${KEYLINE_CMAKE_ARGS:-} >/dev/null
fi
echo "setup: building $build_dir"
start=$(date +%s)
cmake --build "$build_dir" -j"$(nproc)"
echo "setup: build done in $(( $(date +%s) - start )) s"
