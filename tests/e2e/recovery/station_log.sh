#!/usr/bin/env bash
# The station's side of the transparency log (issue #18, docs/transparency.md "Clients") on a whole
# line (scripts/lib/line.sh): `keyline-station run` keeps the leaf index the public DB answers with
# each outbox row; `status` shows the records published but not yet proved in a checkpoint, then 0
# after `outbox check-log`; every stored proof verifies offline (`keyline-recovery log
# verify-inclusion`); a row whose record the log does not hold, or whose leaf moved, raises an ALARM
# (exit 3) and stays unproved; so does a "not-integrated" answer for a leaf the checkpoint holds, or
# one past --max-wait; rows left waiting do not block newer ones under --limit.
# Usage: station_log.sh WORKDIR   (LINE_BIN = directory holding the keyline-* programs)
set -euo pipefail

work=${1:?usage: station_log.sh WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
trap line_down EXIT

rm -rf "$work"
mkdir -p "$work"
N=6
line_up "$work/line" "$N"
ST="$LINE_BIN/keyline-station"
VKEY=${LINE_LOG_KEY_FILE:?line_up keeps the log key}
sdb() { psql "$KEYLINE_STATION_DB" -tAq -v ON_ERROR_STOP=1 "$@"; }

failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
json_field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval("d" + sys.argv[1]))' "$1"; }

line_fleet_file "$work/fleet.txt"
"$ST" run --fleet "$work/fleet.txt" -j 3 --progress plain --publish-wait 30 >"$work/run.log" 2>&1 ||
  { fail "run: exit $?"; tail -20 "$work/run.log"; }

# --- leaf indexes from the publish answers ---------------------------------------------------------
published=$(sdb -c "SELECT count(*) FROM journal.outbox WHERE published_at IS NOT NULL")
with_leaf=$(sdb -c "SELECT count(DISTINCT leaf_index) FROM journal.outbox WHERE published_at IS NOT NULL AND leaf_index < $N")
[ "$published" -eq "$N" ] && [ "$with_leaf" -eq "$N" ] &&
  pass "run: $N records published, each with its own leaf index (0..$((N - 1))) from the public DB's answer" ||
  fail "run: $published published, $with_leaf distinct leaf indexes"

# --- the backlog, then check-log -------------------------------------------------------------------
"$ST" status --json >"$work/status-1.json"
[ "$(json_field '["log"]["not_in_checkpoint"]' <"$work/status-1.json")" -eq "$N" ] &&
  [ "$(json_field '["log"]["oldest_not_in_checkpoint"]' <"$work/status-1.json")" != None ] &&
  pass "status: $N published but not yet in a checkpoint, with the oldest" || fail "status: $(cat "$work/status-1.json")"
"$ST" status | grep -q "log: $N published but not yet in a checkpoint (oldest" && pass "status text names the backlog" ||
  fail "status text: $("$ST" status | grep '^log')"

for _ in $(seq 1 40); do
  rc=0; "$ST" outbox check-log --log-key-file "$VKEY" >"$work/check.out" 2>"$work/check.err" || rc=$?
  [ "$(sdb -c "SELECT count(*) FROM journal.outbox WHERE published_at IS NOT NULL AND log_proof IS NULL")" -eq 0 ] && break
  sleep 0.25
done
[ "$rc" -eq 0 ] && pass "check-log: exit 0 ($(cat "$work/check.out"))" || { fail "check-log: exit $rc"; cat "$work/check.err"; }
"$ST" status --json >"$work/status-2.json"
[ "$(json_field '["log"]["not_in_checkpoint"]' <"$work/status-2.json")" -eq 0 ] &&
  [ "$(json_field '["log"]["proved"]' <"$work/status-2.json")" -eq "$N" ] &&
  pass "status after check-log: 0 not in a checkpoint, $N proved" || fail "status after: $(cat "$work/status-2.json")"

# --- every stored proof checks offline, in the transparency-dev form ---------------------------------
ok=0
while IFS= read -r proof; do
  python3 - "$proof" >"$work/probe.json" <<'PY'
import base64, json, sys
p = json.loads(sys.argv[1])
root = p["checkpoint"].split("\n")[2]
print(json.dumps({"leafIdx": p["leaf_index"], "treeSize": p["tree_size"], "root": root,
                  "leafHash": p["leaf_hash"], "proof": p["proof"]}))
PY
  "$LINE_BIN/keyline-recovery" log verify-inclusion --proof "$work/probe.json" >/dev/null && ok=$((ok + 1))
done < <(sdb -c "SELECT log_proof FROM journal.outbox WHERE log_proof IS NOT NULL")
[ "$ok" -eq "$N" ] && pass "all $N stored proofs verify with keyline-recovery log verify-inclusion" || fail "$ok of $N stored proofs verify"

# --- a public DB that calls records "not integrated" to hide them ---------------------------------
# A TLS proxy in front of the public DB (its certificate, so the station trusts it) answers 404
# not-integrated for the chips listed in hide.txt and passes everything else through.
cat >"$work/hide_proxy.py" <<'PY'
import http.server, json, socketserver, ssl, sys, urllib.error, urllib.request
upstream, pki, hide, portfile = sys.argv[1:5]
up_ctx = ssl.create_default_context(cafile=pki + "/tls-ca.pem")
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        chips = open(hide).read().split()
        parts = self.path.split("?")[0].split("/")
        if len(parts) == 5 and parts[2] == "records" and parts[4] == "proof" and parts[3] in chips:
            code, ctype, body = 404, "application/problem+json", json.dumps({"type": "not-integrated"}).encode()
        else:
            try:
                r = urllib.request.urlopen(upstream + self.path, context=up_ctx, timeout=10)
                code, ctype, body = r.status, r.headers.get("Content-Type", ""), r.read()
            except urllib.error.HTTPError as e:
                code, ctype, body = e.code, e.headers.get("Content-Type", ""), e.read()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
srv = S(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(pki + "/backupdb-tls.pem", pki + "/backupdb-tls.key")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
open(portfile, "w").write(str(srv.server_address[1]))
srv.serve_forever()
PY
: >"$work/hide.txt"
python3 "$work/hide_proxy.py" "$LINE_BACKUPDB_URL" "$KEYLINE_PKI_DIR" "$work/hide.txt" "$work/proxy.port" &
proxy_pid=$!
for _ in $(seq 1 50); do [ -s "$work/proxy.port" ] && break; sleep 0.1; done
via_proxy() { KEYLINE_BACKUPDB_URL="https://127.0.0.1:$(cat "$work/proxy.port")" "$ST" outbox check-log --log-key-file "$VKEY" "$@"; }
read -r chipC chipD < <(sdb -c "SELECT string_agg(chip_id, ' ' ORDER BY leaf_index DESC) FROM (SELECT chip_id, leaf_index FROM journal.outbox ORDER BY leaf_index DESC LIMIT 2) t")
leafC=$(sdb -c "SELECT leaf_index FROM journal.outbox WHERE chip_id = '$chipC'")
publishedC=$(sdb -c "SELECT published_at FROM journal.outbox WHERE chip_id = '$chipC'")
echo "$chipC" >"$work/hide.txt"
sdb -c "UPDATE journal.outbox SET log_proof = NULL, log_checked_at = NULL WHERE chip_id = '$chipC'"
rc=0; via_proxy >"$work/hide.out" 2>"$work/hide.err" || rc=$?
[ "$rc" -eq 3 ] && grep -q "ALARM: the log does not prove chip $chipC.*not yet integrated, but it was published as leaf $leafC" "$work/hide.err" &&
  pass "check-log: not-integrated for a leaf the checkpoint holds is an ALARM, exit 3" ||
  { fail "check-log hidden leaf: exit $rc"; cat "$work/hide.err" "$work/hide.out"; }

# Without a leaf index (the publish answer lost) the row waits, but only up to --max-wait.
sdb -c "UPDATE journal.outbox SET leaf_index = NULL WHERE chip_id = '$chipC'"
rc=0; via_proxy >"$work/wait.out" 2>"$work/wait.err" || rc=$?
[ "$rc" -eq 0 ] && grep -q "1 not yet in a checkpoint" "$work/wait.out" && pass "check-log: a row without a leaf index waits (exit 0)" ||
  { fail "check-log waiting: exit $rc"; cat "$work/wait.err" "$work/wait.out"; }
sdb -c "UPDATE journal.outbox SET published_at = now() - interval '2 hours' WHERE chip_id = '$chipC'"
rc=0; via_proxy >"$work/wait2.out" 2>"$work/wait2.err" || rc=$?
[ "$rc" -eq 3 ] && grep -q "ALARM: the log does not prove chip $chipC.*not in a checkpoint [0-9]* s after it was published (--max-wait 3600)" "$work/wait2.err" &&
  pass "check-log: a row waiting past --max-wait (1 h) is an ALARM, exit 3" ||
  { fail "check-log max-wait: exit $rc"; cat "$work/wait2.err" "$work/wait2.out"; }

# Waiting rows go to the back: the oldest row, held back, does not keep --limit 1 from newer ones.
sdb -c "UPDATE journal.outbox SET published_at = now() - interval '10 minutes', log_checked_at = NULL WHERE chip_id = '$chipC'"
sdb -c "UPDATE journal.outbox SET log_proof = NULL, log_checked_at = NULL WHERE chip_id = '$chipD'"
via_proxy --limit 1 >"$work/order1.out" 2>&1 || true
rc=0; via_proxy --limit 1 >"$work/order2.out" 2>&1 || rc=$?
[ "$rc" -eq 0 ] && [ "$(sdb -c "SELECT log_proof IS NOT NULL FROM journal.outbox WHERE chip_id = '$chipD'")" = t ] &&
  pass "check-log --limit 1: after the waiting oldest row, the next run proves a newer one" ||
  { fail "check-log order: exit $rc, $chipD unproved"; cat "$work/order1.out" "$work/order2.out"; }
kill "$proxy_pid" 2>/dev/null || true
wait "$proxy_pid" 2>/dev/null || true
sdb -c "UPDATE journal.outbox SET leaf_index = $leafC, published_at = '$publishedC' WHERE chip_id = '$chipC'"
rc=0; "$ST" outbox check-log --log-key-file "$VKEY" >"$work/restore.out" 2>&1 || rc=$?
[ "$rc" -eq 0 ] && [ "$(sdb -c "SELECT count(*) FROM journal.outbox WHERE log_proof IS NULL")" -eq 0 ] &&
  pass "without the proxy every row is proved again" || { fail "restore: exit $rc"; cat "$work/restore.out"; }

# --- the log does not hold what the station published --------------------------------------------
# As if the public DB had logged another record for chip A, and had moved chip B to another leaf.
read -r chipA chipB < <(sdb -c "SELECT string_agg(chip_id, ' ' ORDER BY leaf_index) FROM (SELECT chip_id, leaf_index FROM journal.outbox ORDER BY leaf_index LIMIT 2) t")
sdb -c "UPDATE journal.outbox SET log_proof = NULL, record_hash = repeat('AB', 32) WHERE chip_id = '$chipA'"
sdb -c "UPDATE journal.outbox SET log_proof = NULL, leaf_index = leaf_index + 1 WHERE chip_id = '$chipB'"
rc=0; "$ST" outbox check-log --log-key-file "$VKEY" >"$work/alarm.out" 2>"$work/alarm.err" || rc=$?
if [ "$rc" -eq 3 ] && grep -q "ALARM: the log does not prove chip $chipA.*another record" "$work/alarm.err" &&
   grep -q "ALARM: the log does not prove chip $chipB.*moved" "$work/alarm.err"; then
  pass "check-log: another record and a moved leaf raise an ALARM each, exit 3"
else
  fail "check-log alarm: exit $rc"; cat "$work/alarm.err" "$work/alarm.out"
fi
[ "$(sdb -c "SELECT count(*) FROM journal.outbox WHERE log_proof IS NULL")" -eq 2 ] && pass "the two rows stay unproved" ||
  fail "rows proved despite the alarm"

# A fork: the newest stored proof's checkpoint names another root than the log shows at that size
# (as if the public DB had shown this station another tree before). Nothing is checked or stored.
newest=$(sdb -c "SELECT chip_id FROM journal.outbox WHERE log_proof IS NOT NULL ORDER BY log_tree_size DESC, log_checked_at DESC, chip_id LIMIT 1")
sdb -c "SELECT log_proof FROM journal.outbox WHERE chip_id = '$newest'" >"$work/newest.json"
python3 - "$work/newest.json" >"$work/forked.json" <<'PY'
import base64, json, os, sys
p = json.load(open(sys.argv[1]))
lines = p["checkpoint"].split("\n")
lines[2] = base64.b64encode(os.urandom(32)).decode()
p["checkpoint"] = "\n".join(lines)
print(json.dumps(p))
PY
sdb -v proof="$(cat "$work/forked.json")" <<<"UPDATE journal.outbox SET log_proof = :'proof' WHERE chip_id = '$newest'"
rc=0; "$ST" outbox check-log --log-key-file "$VKEY" >"$work/fork.out" 2>"$work/fork.err" || rc=$?
[ "$rc" -eq 5 ] && grep -q "ALARM: the log forked: another root at the same size" "$work/fork.err" &&
  grep -q "0 records proved now" "$work/fork.out" && pass "check-log: a fork against the stored proofs is an ALARM, exit 5, nothing checked" ||
  { fail "check-log fork: exit $rc"; cat "$work/fork.err" "$work/fork.out"; }
sdb -v proof="$(cat "$work/newest.json")" <<<"UPDATE journal.outbox SET log_proof = :'proof' WHERE chip_id = '$newest'"

# The wrong key: nothing is checked, nothing stored.
python3 - "$(cut -d+ -f1 "$VKEY")" >"$work/other.vkey" <<'EOF'
import base64, hashlib, os, sys
name = sys.argv[1].encode(); pub = os.urandom(32)
kid = hashlib.sha256(name + b"\n" + b"\x01" + pub).digest()[:4]
print(name.decode() + "+" + kid.hex() + "+" + base64.b64encode(b"\x01" + pub).decode())
EOF
rc=0; "$ST" outbox check-log --log-key-file "$work/other.vkey" >/dev/null 2>"$work/wrong-key.err" || rc=$?
[ "$rc" -eq 3 ] && grep -q "1182" "$work/wrong-key.err" && pass "check-log with another key: refused (1182), exit 3" ||
  { fail "check-log with another key: exit $rc"; cat "$work/wrong-key.err"; }

echo "failures: $failures"
[ "$failures" -eq 0 ]
