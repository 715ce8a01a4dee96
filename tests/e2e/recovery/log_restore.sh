#!/usr/bin/env bash
# keyline-recovery's transparency-log check (issue #18, docs/recovery.md section 7) against a real
# keyline-backupdb serving its log, on a whole line (scripts/lib/line.sh): a good restore and fetch
# with the pinned log key; then, through a rewriting proxy (log_proxy.py), a tampered inclusion
# proof, another leaf index, a checkpoint whose text was changed under its signature, a record the
# log does not hold and a tampered consistency proof; a key of the same name that is not the log's;
# and a fork (the state file holds another tree than the one served). Every refusal leaves the
# device's files and the state file byte for byte as they were.
# Usage: log_restore.sh WORKDIR   (LINE_BIN = directory holding the keyline-* programs)
set -euo pipefail

work=${1:?usage: log_restore.sh WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
proxy_pid=
cleanup() { [ -z "$proxy_pid" ] || kill "$proxy_pid" 2>/dev/null || true; line_down; }
trap cleanup EXIT

rm -rf "$work"
mkdir -p "$work"
N=3
line_up "$work/line" "$N"
REC="$LINE_BIN/keyline-recovery"
DEV="$LINE_BIN/keyline-device"
ROOT="$LINE_DIR/pki/root.pem"
CA="$LINE_DIR/pki/tls-ca.pem"

failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }

# The log's verifier key, as an owner gets it from the manufacturer.
VKEY="$work/log.vkey"
if [ -n "${LINE_LOG_KEY_FILE:-}" ]; then
  cp "$LINE_LOG_KEY_FILE" "$VKEY"
elif ! "$LINE_BIN/keyline-backupdb" log key >"$VKEY" 2>"$work/log-key.err"; then
  echo "SKIP: the line's public DB keeps no transparency log ($(cat "$work/log-key.err"))"
  exit 77
fi
origin=$(cut -d+ -f1 "$VKEY")
STATE="$work/log-state"
export KEYLINE_LOG_KEY_FILE=$VKEY KEYLINE_LOG_STATE=$STATE

line_personalize >"$work/personalize.json"
addr() { echo "${LINE_DEVICES[$1]}"; }
ddir() { echo "${LINE_DEVICE_DIRS[$1]}"; }
chip() { "$DEV" status --dir "$(ddir "$1")" | awk '$1 == "chip_id" {print $2}'; }
snapshot() { (cd "$(ddir "$1")" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
state_sum() { [ -f "$STATE" ] && sha256sum <"$STATE" || echo none; }

# expect NAME EXIT TEXT DEVICE -- command...: exit code and message match; a refusal leaves the device
# and the state file untouched.
expect() {
  local name=$1 want=$2 text=$3 idx=$4
  shift 5
  local before after sbefore rc=0
  before=$(snapshot "$idx"); sbefore=$(state_sum)
  "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
  after=$(snapshot "$idx")
  if [ "$rc" -ne "$want" ]; then fail "$name: exit $rc, expected $want"; cat "$work/$name.err"; return; fi
  if ! grep -q -- "$text" "$work/$name.err"; then fail "$name: message lacks '$text'"; cat "$work/$name.err"; return; fi
  if [ "$want" -ne 0 ] && [ "$before" != "$after" ]; then fail "$name: device files changed"; return; fi
  if [ "$want" -ne 0 ] && [ "$sbefore" != "$(state_sum)" ]; then fail "$name: the state file changed"; return; fi
  pass "$name (exit $rc: $(grep -m1 'error' "$work/$name.err" || grep -m1 'leaf' "$work/$name.err"))"
}

# The records are integrated within a few seconds (docs/transparency.md): fetch until they are.
c2=$(chip 2)
for _ in $(seq 1 40); do
  rc=0; "$REC" fetch --chip-id "$c2" --db "$LINE_BACKUPDB_URL" --ca "$CA" --out "$work/bundle-2.json" 2>"$work/fetch-wait.err" || rc=$?
  [ "$rc" -eq 4 ] && grep -q "error 5011" "$work/fetch-wait.err" || break
  sleep 0.25
done
[ "$rc" -eq 0 ] && pass "fetch verified chip 2's record in the log and wrote the bundle" || { fail "fetch: exit $rc"; cat "$work/fetch-wait.err"; }
read -r size0 root0 origin0 <"$STATE" || true
[ "$origin0" = "$origin" ] && [ "${size0:-0}" -ge "$N" ] && pass "state file: $origin at size $size0" || fail "state file: $(cat "$STATE" 2>/dev/null)"

# --- the good restore --------------------------------------------------------------------------
"$DEV" wipe-flash --dir "$(ddir 0)" >/dev/null
"$DEV" wipe-flash --dir "$(ddir 1)" >/dev/null
expect good-restore 0 "leaf [0-9]* of the log $origin" 0 -- \
  "$REC" restore --device "$(addr 0)" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT"
"$DEV" boot --dir "$(ddir 0)" >/dev/null && pass "device 0 boots after the log-checked restore" || fail "device 0 does not boot"

# --- a hostile server between the owner and the public DB --------------------------------------
MODE="$work/proxy.mode"
echo pass >"$MODE"
python3 "$here/log_proxy.py" "$LINE_BACKUPDB_URL" "$CA" "$MODE" "$work/proxy.port" 2>"$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 1 50); do [ -f "$work/proxy.port" ] && break; sleep 0.1; done
PROXY="http://127.0.0.1:$(cat "$work/proxy.port")"
via_proxy() { "$REC" restore --device "$(addr 1)" --db "$PROXY" --trust "$ROOT" "$@"; }

for m in flip-proof:"inclusion proof of leaf" flip-leaf:"does not verify" flip-root:"not signed by the pinned log key" \
         no-proof:"the log holds no entry"; do
  echo "${m%%:*}" >"$MODE"
  expect "proxy-${m%%:*}" 3 "${m#*:}" 1 -- via_proxy
done

# A key of the log's name that is not the log's key (C2SP signed-note key ID over name and key).
python3 - "$origin" >"$work/other.vkey" <<'EOF'
import base64, hashlib, os, sys
name = sys.argv[1].encode(); pub = os.urandom(32)
kid = hashlib.sha256(name + b"\n" + b"\x01" + pub).digest()[:4]
print(name.decode() + "+" + kid.hex() + "+" + base64.b64encode(b"\x01" + pub).decode())
EOF
echo pass >"$MODE"
expect another-log-key 3 "not signed by the pinned log key" 1 -- via_proxy --log-key-file "$work/other.vkey"

# --- forks: the state file remembers another tree than the one served --------------------------
cp "$STATE" "$work/state.good"
other_root=$(head -c 32 /dev/urandom | base64)
read -r size root _ <"$work/state.good"
echo "$size $other_root $origin" >"$STATE"
expect fork-same-size 5 "forked: another root at the same size" 1 -- via_proxy
grep -q "size $size root $other_root" "$work/fork-same-size.err" && grep -q "size $size root $root" "$work/fork-same-size.err" &&
  pass "the fork message names both heads" || fail "fork message: $(cat "$work/fork-same-size.err")"
echo "$((size + 1000)) $root $origin" >"$STATE"
expect fork-smaller-tree 5 "smaller than the one seen before" 1 -- via_proxy
echo "1 $other_root $origin" >"$STATE"
[ "$size" -gt 1 ] && expect fork-not-a-prefix 5 "not a prefix" 1 -- via_proxy
cp "$work/state.good" "$STATE"

# A tampered consistency proof: the state is an older, real head of this log (size 1: the root of
# the first leaf alone, taken from the level-0 tile).
if [ "$size" -gt 2 ]; then
  leaf0=$(curl -sf --cacert "$CA" "$LINE_BACKUPDB_URL/v1/log/tile/0/000.p/$size" | head -c 32 | base64) || leaf0=
  if [ -n "$leaf0" ]; then
    echo "1 $leaf0 $origin" >"$STATE"
    echo flip-consistency >"$MODE"
    expect proxy-flip-consistency 5 "not a prefix" 1 -- via_proxy
    echo pass >"$MODE"
    expect consistent-from-size-1 0 "extends the one seen before" 1 -- via_proxy --dry-run
  else
    fail "the level-0 tile of size $size cannot be read"
  fi
fi

# --- after all that, the honest path still restores device 1, and fetch refuses through the proxy --
echo pass >"$MODE"
expect restore-through-honest-proxy 0 "the device booted the restored image" 1 -- via_proxy
echo flip-proof >"$MODE"
rm -f "$work/bundle-2b.json"
rc=0; "$REC" fetch --chip-id "$c2" --db "$PROXY" --out "$work/bundle-2b.json" 2>"$work/fetch-proxy.err" || rc=$?
[ "$rc" -eq 3 ] && [ ! -e "$work/bundle-2b.json" ] && pass "fetch through a tampering proxy: exit 3, no bundle written" ||
  { fail "fetch through the proxy: exit $rc"; cat "$work/fetch-proxy.err"; }

# --- the monitor: the real log verifies; level-0 tiles changed on the way are found -------------
echo pass >"$MODE"
rc=0; "$REC" log monitor --db "$LINE_BACKUPDB_URL" --ca "$CA" --log-state "$work/monitor-state" >"$work/monitor.out" 2>"$work/monitor.err" || rc=$?
[ "$rc" -eq 0 ] && grep -q "^entries_read $size0" "$work/monitor.out" && grep -q "^duplicates 0" "$work/monitor.out" &&
  pass "log monitor: $size0 entries recomputed from the tiles, no duplicates" || { fail "log monitor: exit $rc"; cat "$work/monitor.err" "$work/monitor.out"; }
echo flip-tile >"$MODE"
rc=0; "$REC" log monitor --db "$PROXY" --log-state "$work/monitor-state" --no-entries >/dev/null 2>"$work/monitor-tile.err" || rc=$?
[ "$rc" -eq 3 ] && grep -q "error 5009" "$work/monitor-tile.err" && pass "log monitor: a changed level-0 tile is refused (exit 3)" ||
  { fail "log monitor through flip-tile: exit $rc"; cat "$work/monitor-tile.err"; }
echo pass >"$MODE"

# --- offline: the bundle carries the log's evidence, checked with the pinned key and no network ---
"$DEV" wipe-flash --dir "$(ddir 2)" >/dev/null
python3 - "$work/bundle-2.json" "$work/bundle-2-nolog.json" "$work/bundle-2-badproof.json" <<'PY'
import base64, json, sys
b = json.load(open(sys.argv[1]))
assert "log" in b, "fetch wrote no log evidence"
nolog = dict(b); del nolog["log"]
json.dump(nolog, open(sys.argv[2], "w"))
bad = json.loads(json.dumps(b))
h = bytearray(base64.b64decode(bad["log"]["proof"][0])); h[0] ^= 1
bad["log"]["proof"][0] = base64.b64encode(bytes(h)).decode()
json.dump(bad, open(sys.argv[3], "w"))
PY
expect bundle-without-log 3 "carries no log proof" 2 -- \
  env -u KEYLINE_BACKUPDB_URL "$REC" restore --device "$(addr 2)" --image "$work/bundle-2-nolog.json" --trust "$ROOT"
expect bundle-bad-proof 3 "does not verify against the checkpoint" 2 -- \
  env -u KEYLINE_BACKUPDB_URL "$REC" restore --device "$(addr 2)" --image "$work/bundle-2-badproof.json" --trust "$ROOT"
expect bundle-offline-restore 0 "the bundle proves the record is leaf" 2 -- \
  env -u KEYLINE_BACKUPDB_URL "$REC" restore --device "$(addr 2)" --image "$work/bundle-2.json" --trust "$ROOT"

# --no-log-check says loudly what it skips, and still restores.
"$DEV" wipe-flash --dir "$(ddir 2)" >/dev/null
expect no-log-check 0 "WARNING: --no-log-check" 2 -- \
  env -u KEYLINE_LOG_KEY_FILE "$REC" restore --device "$(addr 2)" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT" --no-log-check
rc=0; env -u KEYLINE_LOG_KEY_FILE "$REC" restore --device "$(addr 2)" --db "$LINE_BACKUPDB_URL" --ca "$CA" --trust "$ROOT" \
  >/dev/null 2>"$work/no-key.err" || rc=$?
[ "$rc" -eq 2 ] && grep -q -- "--log-key" "$work/no-key.err" && pass "no log key: exit 2 naming --log-key" || fail "no log key: exit $rc"

echo "failures: $failures"
[ "$failures" -eq 0 ]
