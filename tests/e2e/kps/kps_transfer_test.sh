#!/usr/bin/env bash
# End-to-end test of keyline-kps v2 and the device agent (docs/kps.md, issue #17) on a whole line
# (scripts/lib/line.sh): real PostgreSQL, the real public DB (the transport certificates come from the
# records), a KPS that signs every answer with a key on the line's SoftHSM token, and record_proxy.py as
# the attacker (it holds the KPS's TLS key). Every attack of issue #17 is refused:
#   - a KPS-chosen key (an envelope the KPS, or a rewriting proxy, sealed to the target's public
#     transport key): refused by the target (KLKE source signature), or by the agent (answer signature);
#   - AC2 bypass: the source is never shown the transport certificate when AC2 refuses;
#   - lost notices: a device that is both source and target; `receive` acks only what it handled;
#   - another label of the same source (label-scoped policy at the KPS, and the source's own policy);
#   - a request replayed after a KPS restart;
# and a tampered, stripped or replayed KPS answer is refused by the agent (2021). The daemon serves and
# receives, survives a KPS restart and exits 0 on SIGTERM; a target offline when its key is delivered
# gets it hours later (simulated clock); a group transfer reaches 3 devices.
# Usage: kps_transfer_test.sh WORKDIR   (LINE_BIN = directory holding the keyline-* programs)
set -euo pipefail

work=${1:?usage: kps_transfer_test.sh WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
# shellcheck source=../../../scripts/lib/line.sh
source "$top/scripts/lib/line.sh"
# shellcheck source=kps_lib.sh
source "$here/kps_lib.sh"
trap line_down EXIT

rm -rf "$work"
mkdir -p "$work"
line_up "$work/line" 6
line_personalize >"$work/personalize.json"
DEV="$LINE_BIN/keyline-device"

failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
ddir() { echo "${LINE_DEVICE_DIRS[$1]}"; }
chip() { "$DEV" status --dir "$(ddir "$1")" | awk '$1 == "chip_id" {print $2}'; }
A=$(chip 0) B=$(chip 1) C=$(chip 2) D=$(chip 3) E=$(chip 4) F=$(chip 5)
for i in 0 1 2 3 4 5; do "$DEV" boot --dir "$(ddir "$i")" >/dev/null || { echo "FAIL device $i not personalized"; exit 1; }; done
agent() { kps_agent_cmd "$@"; }
kcv() { "$DEV" key-kcv --dir "$(ddir "$1")" --label "$2" 2>/dev/null || echo none; }
unacked() { kps_sql "SELECT count(*) FROM notifications WHERE acked_at IS NULL AND $1"; }
wait_for() {  # SECONDS SQL EXPECTED
  local i
  for ((i = 0; i < $1 * 5; i++)); do [ "$(kps_sql "$2")" = "$3" ] && return 0; sleep 0.2; done
  return 1
}

cat >"$work/policy.txt" <<POLICY
# Label-scoped (v2): B may have A's user-key, never A's other-key.
allow   $A $B user-key
allow   $A $B daemon-*
allow   $B $A b-key
request $A $D user-key
allow   $A $E user-key
allow   $A $E other-key
allow   $A $F user-key
allow   $A * group-key
POLICY
kps_init "$work/policy.txt"
kps_start

for label in user-key other-key group-key daemon-1 daemon-2; do "$DEV" key-new --dir "$(ddir 0)" --label "$label" >/dev/null; done
"$DEV" key-new --dir "$(ddir 1)" --label b-key >/dev/null
# The sources' own policies: A gives user-key to B and E, user-* to F, daemon-* to B, group-key to anyone; B gives b-key to A.
for rule in "$B user-key" "$E user-key" "$F user-*" "$B daemon-*" "* group-key"; do
  "$DEV" kps policy add --dir "$(ddir 0)" --target "${rule%% *}" --label "${rule#* }" >/dev/null
done
"$DEV" kps policy add --dir "$(ddir 1)" --target "$A" --label b-key >/dev/null
rc=0; "$DEV" kps policy add --dir "$(ddir 0)" --target not-a-chip --label x >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] && pass "kps policy add refuses a target that is not a chip ID (exit 2)" || fail "policy add bad target: exit $rc"

# --- AC1 and label scope at the KPS ---------------------------------------------------------------
rc=0; agent request 2 --from "$A" --label user-key >/dev/null 2>"$work/c.err" || rc=$?
[ "$rc" -eq 5 ] && grep -q 403 "$work/c.err" && pass "C refused at request (AC1)" || fail "C request: exit $rc $(cat "$work/c.err")"
rc=0; agent request 1 --from "$A" --label other-key >/dev/null 2>"$work/label.err" || rc=$?
[ "$rc" -eq 5 ] && grep -q 403 "$work/label.err" && pass "B refused A's other label (label-scoped policy)" ||
  fail "B asked for other-key: exit $rc $(cat "$work/label.err")"

# --- unsigned request: 401, and the 401 is not signed (no token signature for an anonymous caller) --
curl -s -D "$work/unsigned.h" -o /dev/null --cacert "$KPS_CA" "$KPS_URL/v1/notifications"
grep -q "^HTTP/1.1 401" "$work/unsigned.h" && ! grep -qi "^signature" "$work/unsigned.h" &&
  pass "unsigned request -> 401, answer not signed" || fail "unsigned request: $(head -1 "$work/unsigned.h")"

# --- lost notices: B is the target of A's user-key and the source of b-key for A -------------------
id1=$(agent request 1 --from "$A" --label user-key | awk '$1 == "requested" {print $2}')
id2=$(agent request 0 --from "$B" --label b-key | awk '$1 == "requested" {print $2}')
[ -n "$id1" ] && [ -n "$id2" ] || { fail "no transfer ids"; exit 1; }
agent serve-once 0 >"$work/serve1.out"
grep -q "^delivered $id1 user-key to $B" "$work/serve1.out" && pass "A delivered user-key to B" || fail "serve-once A: $(cat "$work/serve1.out")"
agent receive 1 >"$work/recv1.out"
grep -q "^received $id1 user-key from $A kcv $(kcv 0 user-key)" "$work/recv1.out" && pass "B received user-key" ||
  fail "receive B: $(cat "$work/recv1.out")"
[ "$(unacked "transfer_id = '$id2' AND reason = 'transfer-requested'")" = 1 ] &&
  pass "receive left B's transfer-requested notice unacked" || fail "receive acked a notice it did not handle"
agent serve-once 1 >"$work/serve2.out"
grep -q "^delivered $id2 b-key to $A" "$work/serve2.out" && pass "B (also a source) then served b-key" || fail "serve-once B"
agent receive 0 >"$work/recv2.out" || true
[ "$(kcv 0 b-key)" = "$(kcv 1 b-key)" ] && pass "A received b-key" || fail "A did not receive b-key"
agent serve-once 0 >/dev/null || true; agent serve-once 1 >/dev/null || true  # the key-acknowledged notices
[ "$(kps_sql "SELECT string_agg(state, ' ' ORDER BY state) FROM transfers WHERE id IN ('$id1', '$id2')")" = "acknowledged acknowledged" ] &&
  pass "both transfers acknowledged" || fail "transfers not both acknowledged"
[ "$(unacked "chip IN ('$A', '$B')")" = 0 ] && pass "no notice of A or B left unacked" || fail "notices left unacked"

# --- the attacker proxy ---------------------------------------------------------------------------
pport=$(line_free_port)
python3 "$here/record_proxy.py" "$pport" "127.0.0.1:$KPS_PORT" "$LINE_DIR/pki/kps-tls.pem" "$LINE_DIR/pki/kps-tls.key" \
  "$KPS_CA" "$work/recorded.jsonl" "$work/proxy.mode" >"$work/proxy.out" 2>&1 &
LINE_PIDS+=($!)
line_wait_port 127.0.0.1 "$pport" 20 || { fail "proxy did not start"; cat "$work/proxy.out"; }
via_proxy() { KPS_AGENT_URL="https://127.0.0.1:$pport" kps_agent_cmd "$@"; }

# --- AC2 decided before the source sees the transport certificate ---------------------------------
id3=$(agent request 3 --from "$A" --label user-key | awk '$1 == "requested" {print $2}')
rc=0; via_proxy serve-once 0 >"$work/d-serve.out" 2>"$work/d-serve.err" || rc=$?
[ "$rc" -eq 5 ] && grep -q 403 "$work/d-serve.err" && pass "delivery to D refused (AC2 before S2)" || fail "AC2: exit $rc $(cat "$work/d-serve.err")"
shown=$(python3 - "$work/recorded.jsonl" "$id3" <<'PY'
import base64, json, sys
n = 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    if sys.argv[2] in r["path"] and b"BEGIN CERTIFICATE" in base64.b64decode(r["answer"]):
        n += 1
print(n)
PY
)
[ "$shown" = 0 ] && pass "A was never shown D's transport certificate" || fail "A saw D's transport certificate"
[ "$(kps_sql "SELECT state || ' ' || (transport_served_at IS NULL) || ' ' || (ciphertext IS NULL) FROM transfers WHERE id = '$id3'")" = "refused true true" ] &&
  pass "D's transfer refused, nothing served, nothing stored" || fail "D's transfer: $(kps_sql "SELECT state FROM transfers WHERE id = '$id3'")"

# --- the source's own policy: the KPS allows E other-key, A does not --------------------------------
id4=$(agent request 4 --from "$A" --label other-key | awk '$1 == "requested" {print $2}')
agent serve-once 0 >"$work/e-serve.out" 2>&1 || true
grep -q "^refused $id4 other-key to $E" "$work/e-serve.out" && [ "$(kps_sql "SELECT ciphertext IS NULL FROM transfers WHERE id = '$id4'")" = t ] &&
  pass "A's own policy refused other-key to E (nothing sealed)" || fail "A sealed other-key for E: $(cat "$work/e-serve.out")"

# --- a KPS-chosen key: the KPS (its database) swaps in an envelope it sealed to E -------------------
id5=$(agent request 4 --from "$A" --label user-key | awk '$1 == "requested" {print $2}')
agent serve-once 0 >/dev/null || true
genuine=$(kps_sql "SELECT encode(ciphertext, 'hex') FROM transfers WHERE id = '$id5'")
record() { curl -s --cacert "$KPS_CA" "$LINE_BACKUPDB_URL/v1/records/$1"; }
record "$E" | python3 -c 'import json,sys; print(json.load(sys.stdin)["certificates"][2])' >"$work/e-transport.pem"
record "$A" | python3 -c 'import json,sys; c=json.load(sys.stdin)["certificates"]; print(c[0]); print(c[1])' >"$work/a-chain.pem"
python3 "$here/forge_klke.py" "$id5" user-key "$A" "$E" "$work/e-transport.pem" "$work/a-chain.pem" \
  "$work/forged.klke" "$work/forged.key"
kps_sql "UPDATE transfers SET ciphertext = decode('$(xxd -p -c 100000 "$work/forged.klke")', 'hex') WHERE id = '$id5'" >/dev/null
rc=0; agent receive 4 >"$work/forged.out" 2>"$work/forged.err" || rc=$?
if [ "$rc" -ne 0 ] && grep -q "KLKE: the source signature does not verify" "$work/forged.err" &&
   [ ! -e "$(ddir 4)/secure/keys/user-key.key" ]; then pass "E refused the KPS-sealed key (KLKE signature)"
else fail "forged envelope: exit $rc $(cat "$work/forged.err")"; fi
[ "$(unacked "transfer_id = '$id5' AND reason = 'key-delivered'")" = 1 ] && pass "the notice stays after a refusal" || fail "notice acked on refusal"
kps_sql "UPDATE transfers SET ciphertext = decode('$genuine', 'hex') WHERE id = '$id5'" >/dev/null

# --- answers the agent refuses (2021): re-sealed by the proxy, unsigned, replayed -----------------------
for mode in "reseal $work/forged.klke" strip replay; do
  echo "$mode" >"$work/proxy.mode"
  rc=0; via_proxy receive 4 >"$work/m.out" 2>"$work/m.err" || rc=$?
  if [ "$rc" -eq 5 ] && grep -q "KPS answer not authentic" "$work/m.err" && [ ! -e "$(ddir 4)/secure/keys/user-key.key" ]; then
    pass "proxy '${mode%% *}': answer refused ($(grep -o 'not authentic.*' "$work/m.err" | head -1 | cut -c1-90))"
  else fail "proxy '${mode%% *}': exit $rc $(cat "$work/m.err")"; fi
done
echo pass >"$work/proxy.mode"
via_proxy receive 4 >"$work/e-recv.out" || true
[ "$(kcv 4 user-key)" = "$(kcv 0 user-key)" ] && pass "through the same proxy, untouched, E gets A's key" || fail "E did not get the key"

# --- a signed request replayed after a KPS restart --------------------------------------------------
kps_stop
kps_start
code=$(python3 - "$work/recorded.jsonl" "$KPS_URL" "$KPS_CA" <<'PY'
import base64, http.client, json, ssl, sys
rec = json.loads(open(sys.argv[1]).readline())
host, port = sys.argv[2][len("https://"):].rsplit(":", 1)
c = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=sys.argv[3]))
c.request(rec["method"], rec["path"], body=base64.b64decode(rec["body"]), headers=rec["headers"])
print(c.getresponse().status)
PY
)
[ "$code" = 401 ] && pass "a request replayed after a KPS restart -> 401" || fail "replay after restart -> $code"

# --- the daemon: serves and receives, survives a KPS restart -----------------------------------------
kps_agent_exec agent 0 --wait 5 --max-backoff-ms 1000 >"$work/agent-a.out" 2>"$work/agent-a.err" &
pid_a=$!
kps_agent_exec agent 1 --wait 5 --max-backoff-ms 1000 >"$work/agent-b.out" 2>"$work/agent-b.err" &
pid_b=$!
wait_key() { local i; for ((i = 0; i < $3 * 5; i++)); do [ "$(kcv "$1" "$2")" != none ] && return 0; sleep 0.2; done; return 1; }
agent request 1 --from "$A" --label daemon-1 >/dev/null
wait_key 1 daemon-1 30 && [ "$(kcv 1 daemon-1)" = "$(kcv 0 daemon-1)" ] && pass "daemons moved daemon-1 A -> B" || fail "daemon-1 not received"
kps_stop
sleep 3  # longer than the client's own connect retries: the daemon must back off and reconnect
kps_start
agent request 1 --from "$A" --label daemon-2 >/dev/null
wait_key 1 daemon-2 30 && [ "$(kcv 1 daemon-2)" = "$(kcv 0 daemon-2)" ] && pass "after a KPS restart the daemons moved daemon-2" ||
  fail "daemon-2 not received after restart"

# --- a group transfer by an owner to 3 devices ---------------------------------------------------------
token=$(KEYLINE_KPS_DB="$KPS_DB" "$LINE_BIN/keyline-kps" account add --name owner --device "$A" --device "$B" \
  --device "$E" --device "$F")
curl -s --cacert "$KPS_CA" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "{\"source\":\"$A\",\"label\":\"group-key\",\"targets\":[\"$B\",\"$E\",\"$F\"]}" "$KPS_URL/v1/transfers" >"$work/group.json"
gid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["group_id"])' "$work/group.json" 2>/dev/null || true)
[ -n "$gid" ] && pass "group $gid created by the owner" || fail "group: $(cat "$work/group.json")"
wait_for 30 "SELECT count(*) FROM transfers WHERE group_id = '$gid' AND state IN ('delivered', 'acknowledged')" 3 &&
  pass "A's daemon delivered 3 sealed copies" || fail "group not delivered"
agent receive 4 >/dev/null || true; agent receive 5 >/dev/null || true
wait_for 30 "SELECT count(*) FROM transfers WHERE group_id = '$gid' AND state = 'acknowledged'" 3 &&
  [ "$(kcv 1 group-key)" = "$(kcv 0 group-key)" ] && [ "$(kcv 4 group-key)" = "$(kcv 0 group-key)" ] &&
  [ "$(kcv 5 group-key)" = "$(kcv 0 group-key)" ] && pass "group-key on B, E and F, each acknowledged on its own" ||
  fail "group transfer incomplete"

# --- the target offline at delivery, online 3 hours later (simulated clock) --------------------------
id6=$(agent request 5 --from "$A" --label user-key | awk '$1 == "requested" {print $2}')
wait_for 30 "SELECT state FROM transfers WHERE id = '$id6'" delivered && pass "delivered to F while F is offline" || fail "F's key not delivered"
kill -TERM "$pid_a" "$pid_b"
rc_a=0; wait "$pid_a" || rc_a=$?
rc_b=0; wait "$pid_b" || rc_b=$?
[ "$rc_a" -eq 0 ] && [ "$rc_b" -eq 0 ] && grep -q "agent: stopped" "$work/agent-a.out" && pass "SIGTERM: both daemons exit 0" ||
  fail "daemon exit codes $rc_a $rc_b"
grep -q "retry in" "$work/agent-a.err" && pass "A's daemon backed off and reconnected ($(grep -c 'retry in' "$work/agent-a.err") failed polls)" ||
  fail "A's daemon logged no failed poll across a 3 s KPS outage"
kps_stop
kps_start --clock-offset-s 10800
kps_agent_exec agent 5 --wait 5 --clock-offset-s 10800 >"$work/agent-f.out" 2>"$work/agent-f.err" &
pid_f=$!
wait_key 5 user-key 30 && [ "$(kcv 5 user-key)" = "$(kcv 0 user-key)" ] && pass "F, online 3 h later, received the key through its daemon" ||
  fail "F did not receive: $(tail -3 "$work/agent-f.err")"
kill -TERM "$pid_f"; wait "$pid_f" || true
[ "$(kps_sql "SELECT state FROM transfers WHERE id = '$id6'")" = acknowledged ] && pass "F's transfer acknowledged" || fail "F's transfer not acknowledged"

# --- what the KPS database holds -----------------------------------------------------------------------
key_hex=$(xxd -p -c 64 "$(ddir 0)/secure/keys/user-key.key")
pg_dump "$KPS_DB" >"$work/kps-dump.sql"
grep -qi "$key_hex" "$work/kps-dump.sql" && fail "the KPS database holds the key" || pass "KPS dump does not contain the key"
[ "$(kps_sql "SELECT count(*) FROM transfers WHERE state = 'acknowledged' AND ciphertext IS NOT NULL")" = 0 ] &&
  pass "no envelope kept after acknowledgement" || fail "envelopes kept after acknowledgement"

if [ "$failures" -ne 0 ]; then echo "$failures check(s) failed"; tail -n 5 "$LINE_DIR/logs/kps.log"; exit 1; fi
echo "all KPS checks passed"
