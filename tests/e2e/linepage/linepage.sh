#!/usr/bin/env bash
# Issue #19: `keyline-station run --ops-listen --status-listen` on a line of 20 emulated devices, one
# of which hands back a corrupt backup (keyline-device serve --corrupt-backup: error 4012 at step
# backup). Headless Chromium opens the line page (cdp.py browse, the DevTools protocol): it loads,
# its done count rises while devices finish, the failure shows with its reason, and a screenshot is
# kept in the output directory. Meanwhile clients that never read hold connections to the page up to
# its cap: the line finishes regardless. /metrics passes promtool check metrics (or, without
# promtool, cdp.py check-metrics) and carries the families docs/station.md lists; the page, its
# events and the metrics hold no PIN.
source "$(dirname "$0")/../line/common.sh"
dir=${1:?work dir}
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v chromium >/dev/null; then
  echo "SKIP: chromium is not installed (scripts/setup.sh installs Debian's chromium)"
  exit 77
fi
# A helper this test waited for is no longer line_down's to kill (its PID may be reused).
forget_pid() {
  local keep=() p
  for p in "${LINE_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  LINE_PIDS=("${keep[@]}")
}
rm -rf "$dir"
N=20
# Slow flash writes: the run lasts long enough for the page to be watched while devices finish.
delays="--delays realistic --delay-flash-ms 600"
LINE_DEVICE_FLAGS="$delays --quiet" line_up "$dir" $((N - 1))
out=$LINE_DIR/out
mkdir -p "$out"

# The 20th device: GET DATA DF20 gives its backup with one bit flipped.
"$LINE_BIN/keyline-device" make --dir "$LINE_DIR/bad" --rom-ca "$LINE_DIR/pki/root.pem" >/dev/null
"$LINE_BIN/keyline-device" serve --dir "$LINE_DIR/bad" --listen 127.0.0.1:0 --corrupt-backup $delays --quiet \
  >"$LINE_DIR/bad.out" 2>/dev/null &
LINE_PIDS+=($!)
for _ in $(seq 50); do grep -q '^listening' "$LINE_DIR/bad.out" && break; sleep 0.1; done
line_fleet_file "$LINE_DIR/all.txt"
# Fourth in the queue: it fails while most devices are still to come.
{ head -n 3 "$LINE_DIR/all.txt"; grep '^listening' "$LINE_DIR/bad.out"; tail -n +4 "$LINE_DIR/all.txt"; } >"$LINE_DIR/fleet.txt"
[ "$(wc -l <"$LINE_DIR/fleet.txt")" -eq "$N" ] || fail "fleet of $(wc -l <"$LINE_DIR/fleet.txt"), want $N"
bad_chip=$(awk '{print $3}' "$LINE_DIR/bad.out")

# A listener that cannot be had ends the run before anything is claimed.
rc=0; "$LINE_BIN/keyline-station" run --fleet "$LINE_DIR/fleet.txt" --status-listen 256.0.0.1:1 --progress plain \
  >"$LINE_DIR/logs/badlisten.log" 2>&1 || rc=$?
[ "$rc" -eq 2 ] || { cat "$LINE_DIR/logs/badlisten.log"; fail "a bad --status-listen exited $rc, want 2"; }
[ "$(line_station_sql "SELECT count(*) FROM journal.device")" -eq 0 ] || fail "a bad --status-listen claimed devices"
ok "a bad --status-listen: exit 2, nothing claimed"

# Chromium first (it takes seconds to come up); it opens the page once the run names it.
python3 "$here/cdp.py" browse "$LINE_DIR/logs/run.log" "$out" "$N" >"$LINE_DIR/logs/browse.log" 2>&1 &
browse_pid=$!
LINE_PIDS+=("$browse_pid")  # line_down (the EXIT trap) ends it, and so its Chromium, when a check fails
sleep 2
run_in_background --fleet "$LINE_DIR/fleet.txt" -j 2 --ops-listen 127.0.0.1:0 --status-listen 127.0.0.1:0
for _ in $(seq 300); do grep -q '^line: line page on ' "$LINE_DIR/logs/run.log" && break; sleep 0.05; done
page=$(sed -n 's|^line: line page on \(http://[0-9.:]*\)/$|\1|p' "$LINE_DIR/logs/run.log")
ops=$(sed -n 's|^line: operations (metrics, healthz) on \(http://[0-9.:]*\)$|\1|p' "$LINE_DIR/logs/run.log")
[ -n "$page" ] && [ -n "$ops" ] || { cat "$LINE_DIR/logs/run.log"; fail "the run did not say where its listeners are"; }
case "$page$ops" in *127.0.0.1:*127.0.0.1:*) ;; *) fail "listeners not on loopback: $page $ops" ;; esac
ok "line page on $page, operations on $ops"

# Clients that never read: more connections than the page takes from one address (refused, counted),
# then 8 of them held with pipelined /events requests; the browser comes from the same address.
python3 "$here/cdp.py" stall "${page#http://}" 15 >"$LINE_DIR/logs/stall.log" 2>&1 &
stall_pid=$!
LINE_PIDS+=("$stall_pid")
for _ in $(seq 100); do grep -q '^stall:' "$LINE_DIR/logs/stall.log" && break; sleep 0.1; done
curl -sS "$ops/metrics" >"$LINE_DIR/metrics-stall.txt" || fail "/metrics while the line runs"
grep -Eq '^keyline_station_page_connection_events_total\{event="refused"\} [1-9]' "$LINE_DIR/metrics-stall.txt" ||
  fail "connections over the page's cap were not refused: $(grep page_connection "$LINE_DIR/metrics-stall.txt")"
ok "connections over the page's cap refused and counted; $(cat "$LINE_DIR/logs/stall.log")"

# The page's own answers: one document with its policy, events, read-only.
curl -sS -D "$LINE_DIR/page.head" -o "$LINE_DIR/page.html" "$page/"
grep -qi "^content-security-policy: default-src 'none'" "$LINE_DIR/page.head" || fail "no Content-Security-Policy"
grep -Eq '<(script|link|img)[^>]* (src|href)=' "$LINE_DIR/page.html" && fail "the page loads something from elsewhere"
# Until the line's first snapshot (it opens the token and the database first) an event is "{}".
for _ in $(seq 100); do
  curl -sS "$page/events" >"$LINE_DIR/event.txt"
  grep -q '^data: {"time"' "$LINE_DIR/event.txt" && break
  sleep 0.1
done
grep -q '^retry: ' "$LINE_DIR/event.txt" && grep -q '^data: {"time"' "$LINE_DIR/event.txt" || fail "/events: $(head -c 300 "$LINE_DIR/event.txt")"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$page/events")
[ "$code" = 405 ] || fail "POST /events answered $code, want 405"
[ "$(curl -sS "$ops/healthz")" = ok ] || fail "/healthz"
ok "page: CSP, nothing from elsewhere, events with retry, read-only; healthz"

rc=0; wait "$browse_pid" || rc=$?
forget_pid "$browse_pid"
cat "$LINE_DIR/logs/browse.log"
[ "$rc" -eq 0 ] || { tail -20 "$LINE_DIR/logs/run.log"; fail "the line page in Chromium"; }
grep -q "^screenshot: $out/linepage.png" "$LINE_DIR/logs/browse.log" || fail "no screenshot"
[ "$(head -c 8 "$out/linepage.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "the screenshot is not a PNG"
wait "$stall_pid" || true
forget_pid "$stall_pid"
cat "$LINE_DIR/logs/stall.log"
grep -Eq '^stall: [1-9][0-9]* connections that never read' "$LINE_DIR/logs/stall.log" || fail "the stalling client held nothing"

rc=0; wait "$RUN_PID" || rc=$?
tail -25 "$LINE_DIR/logs/run.log"
[ "$rc" -eq 1 ] || fail "run exited $rc, want 1 (one device failed)"
grep -Eq '\| done \(published\) +\| +'$((N - 1))' \|' "$LINE_DIR/logs/run.log" || fail "summary does not show $((N - 1)) done"
grep -q "chip $bad_chip: step backup" "$LINE_DIR/logs/run.log" || fail "the summary does not name the bad chip's failure"
ok "the line finished ($((N - 1)) done, 1 failed) with clients stalled on its page"

# The exposition (taken by cdp.py once the failure was on the page): promtool where Debian's prometheus provides it, else the same checks in cdp.py.
m=$out/metrics.txt
if command -v promtool >/dev/null; then
  promtool check metrics <"$m" >"$LINE_DIR/promtool.txt" 2>&1 || { cat "$LINE_DIR/promtool.txt"; fail "promtool check metrics"; }
  ok "promtool check metrics: clean"
else
  python3 "$here/cdp.py" check-metrics "$m" || fail "metrics text format"
  ok "no promtool: cdp.py check-metrics clean"
fi
for want in 'keyline_station_devices_done_total [1-9]' 'keyline_station_devices_failed_total\{reason="4012"\} 1' \
  'keyline_station_step_duration_seconds_count\{step="claim"\} [1-9]' \
  'keyline_station_step_duration_seconds_bucket\{step="backup",le="\+Inf"\} [1-9]' \
  'keyline_station_token_operation_duration_seconds_count\{op="sign"\} [1-9]' \
  'keyline_station_token_operation_duration_seconds_count\{op="derive"\} [1-9]' \
  'keyline_station_publish_total\{outcome="published",class="2xx"\} [1-9]' \
  'keyline_station_fixtures\{state="failed"\} 1' 'keyline_station_outbox_backlog [0-9]'; do
  grep -Eq "^$want" "$m" || fail "metrics lack /$want/"
done
ok "metrics: done, failed by reason, step and token histograms, publish outcomes, fixtures, backlog"

# No secret on the page, in its events or in the metrics (chip IDs and IMEIs are public).
pin=$(cat "$LINE_DIR/hsm/user.pin")
for f in "$LINE_DIR/page.html" "$LINE_DIR/event.txt" "$m"; do
  grep -qF "$pin" "$f" && fail "the token PIN in $f"
done
ok "no PIN on the page, in its events or the metrics"
echo "screenshots and metrics: $out"
