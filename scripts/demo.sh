#!/usr/bin/env bash
# The main job (DESIGN section 8). Until the station lands (issue 5) this only prepares the machine
# and says what it will do.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
"$top/scripts/setup.sh"
cat >&2 <<'MSG'
demo: the station (keyline-station) has not landed yet, so the demo cannot personalize devices.
demo: when it lands this script starts PostgreSQL and SoftHSM under .keyline/, the public DB, N emulated
demo: devices, personalizes them, restores one after a flash wipe and writes .keyline/demo/summary.json.
MSG
exit 1
