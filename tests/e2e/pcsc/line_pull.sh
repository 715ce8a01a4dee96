# A line on four PC/SC readers (`keyline-station run --reader`, issue #13) where one card is pulled out in
# the middle of STORE DATA (its emulator killed: the vpcd reader sees the card go) and put back into the
# same reader: one record for it, with the IMEI it was claimed with; the invariants of docs/line.md; the
# cards left in are not taken twice, and a done card pulled out and put back is taken again (so the
# "not twice" above is the line's doing, not a watcher that stopped looking).
source "$(dirname "$0")/common.sh"
dir=${1:?work dir}
rm -rf "$dir"
N=4
pcsc_line_up "$dir" "$N"
st="$LINE_BIN/keyline-station"
victim=3
victim_chip=$(chip_of "$victim")

# Three cards go in at once; the fourth stores slowly (each STORE DATA block takes 3 s).
for i in 0 1 2; do card_in "$i" --quiet; done
card_in "$victim" --quiet --delay-store-ms 3000
run_in_background --reader 'keyline vpcd*' --idle-exit 6
run_log=$LINE_DIR/logs/run.log

# Pull the card out once the journal has it claimed or issued (its STORE DATA then under way).
state=
for _ in $(seq 400); do
  state=$(line_station_sql "SELECT state FROM journal.device WHERE chip_id = '$victim_chip'")
  [ "$state" = issued ] && break
  sleep 0.05
done
[ "$state" = issued ] || fail "chip $victim_chip never reached issued (state '$state'): $(cat "$run_log")"
sleep 0.5
card_out "$victim"
imei_before=$(line_station_sql "SELECT imei FROM journal.device WHERE chip_id = '$victim_chip'")
wait_card_state "$victim" absent
sleep 1.5
state=$(line_station_sql "SELECT state FROM journal.device WHERE chip_id = '$victim_chip'")
[ "$state" = issued ] || fail "after the pull, chip $victim_chip is '$state', want issued (the claim kept)"
ok "card pulled out in the middle of STORE DATA: the journal keeps chip $victim_chip with IMEI $imei_before"

# Back into the same reader, at full speed: the line resumes it.
card_in "$victim" --quiet
for _ in $(seq 600); do
  [ "$(line_station_sql "SELECT state FROM journal.device WHERE chip_id = '$victim_chip'")" = published ] && break
  sleep 0.05
done
[ "$(line_station_sql "SELECT state FROM journal.device WHERE chip_id = '$victim_chip'")" = published ] ||
  fail "chip $victim_chip not published after it was put back: $(cat "$run_log")"
imei_after=$(line_station_sql "SELECT imei FROM journal.device WHERE chip_id = '$victim_chip'")
[ "$imei_after" = "$imei_before" ] || fail "chip $victim_chip came back as IMEI $imei_after, was $imei_before"
[ "$(line_public_sql "SELECT count(*) FROM records WHERE chip_id = '$victim_chip'")" -eq 1 ] ||
  fail "chip $victim_chip: not exactly one public record"
[ "$(line_public_sql "SELECT imei FROM records WHERE chip_id = '$victim_chip'")" = "$imei_before" ] ||
  fail "chip $victim_chip: the public record holds another IMEI"
ok "put back: resumed and published with the same IMEI $imei_before, one public record"

# Card 0 is pulled out and put back after it was done: that card is taken again, and refused before any
# claim as a device this run finished (no failure).
for _ in $(seq 200); do [ "$(published_count)" -eq "$N" ] && break; sleep 0.05; done
card_out 0
wait_card_state 0 absent
card_in 0 --quiet
# --idle-exit 6 ends the line once nothing happens; a line that keeps taking the cards left in never
# goes idle: give it 60 s, then fail with what it did.
for _ in $(seq 600); do kill -0 "$RUN_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$RUN_PID" 2>/dev/null; then
  kill -9 "$RUN_PID"
  tail -5 "$run_log"
  fail "the line did not go idle within 60 s: $(grep -c 'was done earlier in this run' "$run_log") cards were taken again"
fi
finish_run "$N"
grep -q '^failed: ' "$run_log" && fail "a device failed"
grep -q "reader \"${PCSC_READERS[0]}\": chip $(chip_of 0) was done earlier in this run; not personalized again" "$run_log" ||
  fail "the done card put back was not taken again"
for i in 0 1 2 "$victim"; do
  line=$(grep -E "^${PCSC_READERS[$i]} +[0-9]+ +[0-9]+ +[0-9]+ " "$run_log" | tail -1)
  [ -n "$line" ] || fail "no summary line for reader ${PCSC_READERS[$i]}"
  read -r cards done failed <<<"$(sed -E "s/^${PCSC_READERS[$i]} +([0-9]+) +([0-9]+) +([0-9]+) .*/\1 \2 \3/" <<<"$line")"
  case $i in
    0) want=2 ;;         # done, pulled out, put back: taken again (and not personalized)
    "$victim") want=2 ;; # the pulled card, and its resume
    *) want=1 ;;         # left in after it was done: never taken again
  esac
  [ "$cards" -eq "$want" ] || fail "reader ${PCSC_READERS[$i]}: $cards cards taken, want $want ($line)"
  [ "$done" -eq 1 ] && [ "$failed" -eq 0 ] || fail "reader ${PCSC_READERS[$i]}: done $done failed $failed ($line)"
  grep -q 'done, card in$' <<<"$line" || fail "reader ${PCSC_READERS[$i]}: state is not 'done, card in' ($line)"
done
ok "cards left in were taken once; the pulled card twice; a done card put back again: taken again"
check_line_invariants "$N"
