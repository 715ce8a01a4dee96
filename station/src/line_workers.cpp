// The line's workers: each takes the next device, personalizes it, and settles the result (done,
// waiting in the outbox, tried again, failed). Also the wait for a station database that is away.
#include <algorithm>

#include "keyline/core/error.h"
#include "keyline/station/errors.h"
#include "line_engine.h"

namespace keyline::station::line_detail {

bool link_trouble(int code) {
  const auto c = static_cast<core::ErrorCode>(code);
  return c == core::ErrorCode::Network || c == core::ErrorCode::Timeout || c == core::ErrorCode::Io ||
         c == core::ErrorCode::BadFrame || c == core::ErrorCode::DbConnection || c == errc::JournalConflict ||
         c == errc::KeyMismatch;
}

// Called with m_mutex held, for a device that failed with DbConnection: marks the database away
// (from the first such failure on) and says whether the outage is still within --db-wait.
bool Line::db_outage_tolerated() {
  const auto now = Clock::now();
  if (m_db_down_since == Clock::time_point{}) {
    m_db_down_since = now;
    m_db_pause = std::chrono::milliseconds(100);
  }
  if (m_db_probe_ok) m_db_probe_at = now + m_db_pause;
  m_db_probe_ok = false;
  return now - m_db_down_since < std::chrono::milliseconds(m_options.db_wait_ms);
}

// Called with m_mutex held before a worker starts a device. Returns true when the database answers
// (or the outage outlasted --db-wait: devices then fail as they come); false after a wait, so the
// caller looks at the queue and the stop flag again. While the database is away one worker at a time
// probes it (SELECT 1 on a pooled session, which reconnects), the others sleep.
bool Line::wait_for_db(std::unique_lock<std::mutex>& l) {
  if (m_db_down_since == Clock::time_point{} || m_db_probe_ok) return true;
  if (Clock::now() - m_db_down_since >= std::chrono::milliseconds(m_options.db_wait_ms)) return true;
  if (g_stop.load()) return true;  // draining: in-flight devices only, and the queue is not started
  if (m_db_probing || Clock::now() < m_db_probe_at) {
    m_cv.wait_until(l, std::min(m_db_probe_at, Clock::now() + std::chrono::milliseconds(200)));
    return false;
  }
  m_db_probing = true;
  l.unlock();
  bool up = false;
  try {
    auto lease = m_db->acquire();
    lease->exec("SELECT 1");
    up = true;
  } catch (const core::Error&) {
    // Still away.
  }
  l.lock();
  m_db_probing = false;
  if (up) {
    m_db_probe_ok = true;
    m_cv.notify_all();
    return true;
  }
  m_db_pause = std::min(std::chrono::milliseconds(5000), m_db_pause * 2);
  m_db_probe_at = Clock::now() + m_db_pause;
  return false;
}

// Takes the next device and the station (token) to personalize it with; false when the worker should
// end. An empty queue with devices in flight (or waiting for a probe of the token) may still get a
// retry back, and a line on readers gets its cards from the watcher: both wait. While the token is
// probed no device starts (wait_for_token).
bool Line::next_item(WorkItem& item, std::shared_ptr<LineStation>& station) {
  while (true) {
    if (!want_more()) return false;
    std::unique_lock<std::mutex> l(m_mutex);
    if (!wait_for_token(l)) continue;
    while (m_queue.empty() && (m_in_flight > 0 || !m_token_held.empty() || reader_mode()) && !g_stop.load() &&
           !m_readers_end.load() && !count_reached() && !m_probe_wanted)
      m_cv.wait_for(l, std::chrono::milliseconds(100));
    if (m_probe_wanted) continue;
    if (m_queue.empty()) return false;
    if (!wait_for_db(l)) continue;
    item = m_queue.front();
    m_queue.pop_front();
    ++m_in_flight;
    station = m_station;
    return true;
  }
}

void Line::worker() {
  WorkItem item;
  std::shared_ptr<LineStation> station;
  while (next_item(item, station)) {
    // Never throws: a station database that is away comes back as the device's error (DbConnection),
    // and the device is tried again.
    JournalDb db(*m_db, m_group.get());
    m_metrics.device_started(item.device.endpoint);
    settle(item, station->personalizer->personalize(item.device.endpoint, db), *station);
    station.reset();
  }
}

// Called with m_mutex held when a chip's record is in the public DB.
void Line::note_done(const std::string& chip) {
  m_done.insert(chip);
  m_waiting.erase(chip);
  m_metrics.device_published(chip);
}

// Called with m_mutex held: a device that failed for good.
void Line::count_failure(const WorkItem& item, const DeviceResult& r) {
  ++m_failed;
  m_metrics.device_failed(r.error_code, r.chip_id);
  if (r.chip_refused) ++m_chips_refused;
  m_failures.push_back(item.device.endpoint + ": error " + std::to_string(r.error_code) + ": " + r.error);
  if (item.reader >= 0) ++m_readers[static_cast<std::size_t>(item.reader)].failed;
  if (r.error_code == static_cast<int>(errc::PoolEmpty) && !m_halt) {
    m_halt = true;
    m_halted =
        "the pool is empty and the line profile does not top it up (error " + std::to_string(r.error_code) + ")";
  }
}

// Called with m_mutex held for a device that neither finished nor waits for the database: true when
// it goes back into the queue (an empty pool being topped up, a dropped link with attempts left).
bool Line::retry_or_fail(WorkItem& item, const DeviceResult& r) {
  if (r.error_code == static_cast<int>(errc::PoolEmpty) && !m_profile.tac.empty() && item.attempt < 50) {
    // The progress thread tops the pool up; nothing was claimed for this device.
    ++item.attempt;
    m_queue.push_back(item);
    return true;
  }
  const bool pcsc_trouble = r.error_code >= static_cast<int>(core::ErrorCode::Pcsc) &&
                            r.error_code <= static_cast<int>(core::ErrorCode::PcscCardRemoved);
  if (item.reader >= 0 && (link_trouble(r.error_code) || pcsc_trouble)) {
    // A card pulled out, or a link that dropped: the claim stays with the chip, and the watcher hands
    // the card over again once it is (back) in the reader (line_readers.cpp).
    note_reader("reader \"" + m_readers[static_cast<std::size_t>(item.reader)].name + "\": the link to " +
                (r.chip_id.empty() ? std::string("the card") : "chip " + r.chip_id) + " dropped at step " +
                step_name(r.reached) + " (error " + std::to_string(r.error_code) +
                "); a claim stays with the chip, and the card is finished when it is (back) in a reader");
    settle_card(item, false, false);
    return true;
  }
  if (link_trouble(r.error_code) && item.attempt < m_options.device_attempts) {
    // A dropped link keeps the claim with the chip (journal row); the retry resumes it.
    ++item.attempt;
    m_queue.push_back(item);
    return true;
  }
  count_failure(item, r);
  return false;
}

// Called with m_mutex held: what a result says about the token's key sets and the station database.
void Line::note_health(const DeviceResult& r, bool db_away) {
  if (r.error_code == static_cast<int>(errc::KeyMismatch)) {
    if (++m_key_mismatch_run >= kKeyMismatchHalt && !m_halt) {
      m_halt = true;
      m_halted = std::to_string(m_key_mismatch_run) +
                 " stored key sets in a row do not open or do not match their public halves (error 4013); check "
                 "that this station's token holds the wrapping key that made them "
                 "(pool.device_key_quarantine lists them)";
    }
  } else if (r.done || r.in_outbox) {
    m_key_mismatch_run = 0;
  }
  if (!db_away && (r.done || r.in_outbox)) {  // its statements went through: the outage is over
    m_db_down_since = {};
    m_db_probe_ok = false;
  }
}

// Called with m_mutex held for a device published, or whose record is durable in the outbox.
void Line::keep_record(DeviceResult& r) {
  if (r.done) {
    note_done(r.chip_id);
    return;
  }
  if (!m_done.count(r.chip_id)) {
    m_waiting.insert(r.chip_id);
    // Set whenever in_outbox is; without it the sweeping lane finds the row in the outbox.
    if (!r.record_json.empty()) m_to_publish.push_back({r.chip_id, r.journal_id, std::move(r.record_json)});
  }
  m_cv.notify_all();
}

void Line::settle(WorkItem item, DeviceResult r, const LineStation& station) {
  std::lock_guard<std::mutex> l(m_mutex);
  m_metrics.device_ended(r);
  --m_in_flight;
  m_cv.notify_all();
  m_last_activity = Clock::now();
  if (failover_holds(item, r, station)) return;
  settle_locked(std::move(item), std::move(r));
}

// Called with m_mutex held: what a device's result does to the counts and the queue.
void Line::settle_locked(WorkItem item, DeviceResult r) {
  const bool db_away = r.error_code == static_cast<int>(core::ErrorCode::DbConnection);
  note_health(r, db_away);
  const bool card = item.reader >= 0;
  if (card && !r.chip_id.empty()) m_chip_reader[r.chip_id] = item.reader;
  if (db_away && db_outage_tolerated()) {
    // Not an attempt: the device goes back to the front and waits with the others (wait_for_db).
    m_queue.push_front(item);
    m_cv.notify_all();
    return;
  }
  if (r.done || r.in_outbox) {
    keep_record(r);
    if (card) settle_card(item, true, false);
    return;
  }
  if (card && r.error_code == static_cast<int>(errc::AlreadyPersonalized) && m_done.count(r.chip_id)) {
    // A card this run finished, pulled out and put back: refused before any claim, and no failure.
    note_reader("reader \"" + m_readers[static_cast<std::size_t>(item.reader)].name + "\": chip " + r.chip_id +
                " was done earlier in this run; not personalized again");
    settle_card(item, true, false);
    return;
  }
  if (retry_or_fail(item, r)) return;
  if (card) settle_card(item, true, true);
}

}  // namespace keyline::station::line_detail
