#!/usr/bin/env bash
# Debian packages: builds the Release tree (scripts/setup.sh), then `cpack -G DEB` writes one package per
# program plus keyline-common into build/packages/ (cmake/Packaging.cmake), and lintian checks each one:
# any error fails (the warnings left, and why: docs/operations.md, "Packages and services").
#   KEYLINE_BUILD_DIR=DIR   another build directory (default build)
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
build=${KEYLINE_BUILD_DIR:-build}

KEYLINE_BUILD_TYPE=Release "$top/scripts/setup.sh"
mkdir -p "$build/packaging"
rm -rf "$build/packages"
if ! (cd "$build" && cpack -G DEB) >"$build/packaging/cpack.log" 2>&1; then
  tail -30 "$build/packaging/cpack.log"
  echo "package: cpack failed (log $build/packaging/cpack.log)" >&2
  exit 1
fi
mapfile -t debs < <(ls "$build"/packages/*.deb)
echo "package: ${#debs[@]} packages in $build/packages/"
for d in "${debs[@]}"; do
  printf '  %s  %s\n' "$(basename "$d")" "$(dpkg-deb -f "$d" Depends)"
done
echo "package: lintian"
lintian --fail-on error --tag-display-limit 0 "${debs[@]}"
echo "package: lintian found no errors"
