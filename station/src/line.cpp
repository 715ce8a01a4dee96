#include "keyline/station/line.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <deque>
#include <iomanip>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_set>

#include "keyline/core/error.h"
#include "keyline/core/http.h"
#include "keyline/core/pq.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"
#include "keyline/station/personalize.h"
#include "keyline/station/pool.h"
#include "keyline/station/publisher.h"
#include "keyline/station/tls_token_key.h"
#include "keyline/station/fault_hook.h"

namespace keyline::station {

namespace {

// Lock-free, so setting it from a signal handler is safe (C++17 [support.signal]).
std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the stop flag is set from a signal handler");

extern "C" void on_stop_signal(int) { request_line_stop(); }

using Clock = std::chrono::steady_clock;

constexpr int kDbSessions = 16;
// Group commit of the journal steps: batches in flight at once and statements per batch. Two
// flushers keep one batch executing while the other waits for its WAL flush.
constexpr std::size_t kCommitFlushers = 2;
constexpr std::size_t kCommitBatch = 32;

struct WorkItem {
  LineDevice device;
  int attempt = 1;
};

// A record a worker just wrote to the outbox, handed to a lane in memory (no read back).
struct FreshRecord {
  std::string chip_id;
  std::int64_t device_id = 0;
  std::string record_json;
};

// Failures the next attempt on the same device can get past: a dropped link or journal race (the
// claim stays with the chip), or a stored key set whose halves disagree (KeyMismatch: that set was
// quarantined or its journal row voided, so the retry claims a sound one; docs/station.md, 4013).
bool link_trouble(int code) {
  const auto c = static_cast<core::ErrorCode>(code);
  return c == core::ErrorCode::Network || c == core::ErrorCode::Timeout || c == core::ErrorCode::Io ||
         c == core::ErrorCode::BadFrame || c == core::ErrorCode::DbConnection || c == errc::JournalConflict ||
         c == errc::KeyMismatch;
}

class Line {
 public:
  Line(const StationConfig& config, const LineProfile& profile, const LineOptions& options, std::ostream& out)
      : m_config(config), m_profile(profile), m_options(options), m_out(out) {
    m_config.publish_attempts = 1;
    if (!profile.key_source.empty()) m_config.key_source = profile.key_source;
  }

  LineSummary run();

 private:
  void worker();
  bool db_outage_tolerated();
  bool wait_for_db(std::unique_lock<std::mutex>& l);
  void lane(bool sweeper);
  void marker();
  bool publish_one(core::pq::Connection& db, core::http::Client& client, const std::string& chip, std::int64_t device_id,
                   const std::string& record_json);
  int sweep(core::pq::Connection& db, core::http::Client& client);
  std::unique_ptr<core::http::Client> make_client() const;
  void top_up_pool(core::pq::Connection& db);
  void progress(core::pq::Connection& db, bool final_line);
  bool want_more() const {
    if (g_stop.load() || m_halt.load()) return false;
    if (m_options.count <= 0) return true;
    std::lock_guard<std::mutex> l(m_mutex);
    return static_cast<std::int64_t>(m_done.size()) + m_in_flight + static_cast<std::int64_t>(m_waiting.size()) <
           m_options.count;
  }

  StationConfig m_config;
  const LineProfile& m_profile;
  const LineOptions& m_options;
  std::ostream& m_out;

  std::unique_ptr<StationKeys> m_keys;
  Poco::Net::Context::Ptr m_tls;  // mutual TLS with the token-held station key, shared by the lanes
  std::unique_ptr<Personalizer> m_personalizer;
  std::unique_ptr<core::pq::Pool> m_db;  // the workers' station-database sessions
  std::unique_ptr<core::pq::GroupCommit> m_group;  // the workers' journal steps, committed in batches

  mutable std::mutex m_mutex;
  std::condition_variable m_cv;
  std::deque<WorkItem> m_queue;
  std::unordered_set<std::string> m_done;     // chip IDs published during this run
  std::unordered_set<std::string> m_waiting;  // chip IDs whose record waits in the outbox
  std::deque<FreshRecord> m_to_publish;       // fresh outbox rows from the workers, for the lanes
  std::unordered_set<std::string> m_publishing;  // chips a lane is sending, or the public DB holds unmarked
  std::deque<std::pair<std::string, std::int64_t>> m_marks;  // accepted by the public DB, to mark published
  std::condition_variable m_mark_cv;
  std::atomic<bool> m_marker_stop{false};
  std::int64_t m_in_flight = 0;
  std::int64_t m_failed = 0;
  std::int64_t m_refused = 0;  // records the public DB refused for good during this run (parked)
  std::int64_t m_already = 0;
  std::vector<std::string> m_failures;
  std::atomic<bool> m_workers_done{false};
  std::atomic<bool> m_drainer_stop{false};
  std::atomic<bool> m_halt{false};  // pool empty with no top-up, or key sets that never open: start nothing new
  // Key sets refused in a row (4013). One is a damaged row; several in a row mean this station's wrapping
  // key is not the one that wrapped them (another station's pool, a re-initialised token): stop before
  // the whole shared pool moves to the quarantine.
  int m_key_mismatch_run = 0;
  std::string m_halted;  // why the line stopped starting devices, for the summary
  static constexpr int kKeyMismatchHalt = 3;
  // The station database away (a restart, a failover): devices wait for it instead of spending their
  // attempts in seconds. One worker probes it at a time, with a pause doubling to 5 s; the others wait.
  Clock::time_point m_db_down_since{};  // default-constructed: the database answers
  Clock::time_point m_db_probe_at{};
  std::chrono::milliseconds m_db_pause{100};
  bool m_db_probing = false;
  bool m_db_probe_ok = false;  // the last probe got through: workers go on (the outage clock runs until
                               // a device's statements get through, so --db-wait bounds the whole episode)
  std::atomic<std::int64_t> m_backlog{0};
  Clock::time_point m_start;
  Clock::time_point m_last_plain;
  std::string m_pool_note;
};

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

void Line::worker() {
  while (true) {
    WorkItem item;
    if (!want_more()) break;
    {
      // An empty queue with devices in flight may still get a retry back: wait for it.
      std::unique_lock<std::mutex> l(m_mutex);
      while (m_queue.empty() && m_in_flight > 0 && !g_stop.load())
        m_cv.wait_for(l, std::chrono::milliseconds(100));
      if (m_queue.empty()) break;
      if (!wait_for_db(l)) continue;
      item = m_queue.front();
      m_queue.pop_front();
      ++m_in_flight;
    }
    // Never throws: a station database that is away comes back as the device's error (DbConnection),
    // and the device is tried again.
    JournalDb db(*m_db, m_group.get());
    DeviceResult r = m_personalizer->personalize(item.device.endpoint, db);
    std::lock_guard<std::mutex> l(m_mutex);
    --m_in_flight;
    m_cv.notify_all();
    const bool db_away = r.error_code == static_cast<int>(core::ErrorCode::DbConnection);
    if (r.error_code == static_cast<int>(errc::KeyMismatch)) {
      if (++m_key_mismatch_run >= kKeyMismatchHalt && !m_halt) {
        m_halt = true;
        m_halted = std::to_string(m_key_mismatch_run) +
                   " stored key sets in a row do not open or do not match their public halves (error 4013); check that this station's token holds the wrapping key that made them "
                   "(pool.device_key_quarantine lists them)";
      }
    } else if (r.done || r.in_outbox) {
      m_key_mismatch_run = 0;
    }
    if (!db_away && (r.done || r.in_outbox)) {  // its statements went through: the outage is over
      m_db_down_since = {};
      m_db_probe_ok = false;
    }
    if (db_away && db_outage_tolerated()) {
      // Not an attempt: the device goes back to the front and waits with the others (wait_for_db).
      m_queue.push_front(item);
      m_cv.notify_all();
    } else if (r.done) {
      m_done.insert(r.chip_id);
      m_waiting.erase(r.chip_id);
    } else if (r.in_outbox) {
      if (!m_done.count(r.chip_id)) {
        m_waiting.insert(r.chip_id);
        // Set whenever in_outbox is; without it the sweeping lane finds the row in the outbox.
        if (!r.record_json.empty()) m_to_publish.push_back({r.chip_id, r.journal_id, std::move(r.record_json)});
      }
      m_cv.notify_all();
    } else if (r.error_code == static_cast<int>(errc::PoolEmpty) && !m_profile.tac.empty() &&
               item.attempt < 50) {
      // The progress thread tops the pool up; nothing was claimed for this device.
      ++item.attempt;
      m_queue.push_back(item);
    } else if (link_trouble(r.error_code) && item.attempt < m_options.device_attempts) {
      // A dropped link keeps the claim with the chip (journal row); the retry resumes it.
      ++item.attempt;
      m_queue.push_back(item);
    } else {
      ++m_failed;
      m_failures.push_back(item.device.endpoint + ": error " + std::to_string(r.error_code) + ": " + r.error);
      if (r.error_code == static_cast<int>(errc::PoolEmpty) && !m_halt) {
        m_halt = true;
        m_halted = "the pool is empty and the line profile does not top it up (error " +
                   std::to_string(r.error_code) + ")";
      }
    }
  }
}

std::unique_ptr<core::http::Client> Line::make_client() const {
  core::http::ClientOptions opt;
  opt.base_url = m_config.backupdb_url;
  opt.context = m_tls;
  opt.connect_attempts = 1;  // the lane's own backoff decides when to try again
  opt.connect_timeout = std::chrono::milliseconds(2000);
  opt.io_timeout = std::chrono::milliseconds(10000);
  return std::make_unique<core::http::Client>(opt);
}

// One POST on the lane's kept-alive connection (one TLS handshake per lane, not per device).
// Returns true when the public DB holds the record (publish_outcome, as Publisher::publish). The
// caller has put the chip in m_publishing; it leaves it there when the public DB accepted the record
// (the marker releases it) and is released here otherwise.
bool Line::publish_one(core::pq::Connection& db, core::http::Client& client, const std::string& chip,
                       std::int64_t device_id, const std::string& record_json) {
  std::string detail;
  bool ok = false, refused = false;
  try {
    const auto r = client.post("/v1/records", record_json, "application/json");
    const auto outcome = publish_outcome(r.status);
    ok = outcome == PublishOutcome::Published || outcome == PublishOutcome::AlreadyPublished;
    refused = outcome == PublishOutcome::Refused;
    if (!ok) detail = problem_summary(r.status, r.body);
  } catch (const core::Error& e) {
    detail = e.what();
  }
  if (ok) {
    fault_point("drain");  // crash tests (fault_hook.h)
    // The marker thread marks it (with whatever else was accepted meanwhile) and releases the chip
    // from m_publishing; until then no sweep sends it again.
    {
      std::lock_guard<std::mutex> l(m_mutex);
      m_marks.emplace_back(chip, device_id);
    }
    m_mark_cv.notify_one();
    return true;
  }
  // Away or slow: the record stays, with a growing pause, and the chip is free for a later sweep.
  // Refused for good (409: another record holds the chip or the IMEI; 422: it does not validate):
  // parked for an operator, and the device counts as failed with the public DB's reason.
  {
    std::lock_guard<std::mutex> l(m_mutex);
    m_publishing.erase(chip);
    if (refused) ++m_refused;
    if (refused && m_waiting.erase(chip)) {
      ++m_failed;
      m_failures.push_back("chip " + chip + ": step publish: public DB refused the record: " + detail +
                           "; parked in the outbox (keyline-station status)");
    }
  }
  // Should this write fail, the row is simply sent again by a later sweep, and refused again.
  note_publish_failure(db, chip, refused, detail);
  return refused;  // the public DB answered a refusal: no reason to back the lane off
}

// Outbox rows that are due and no lane holds: left by an earlier run, or unreachable before. Parked
// rows (refused for good) wait for an operator's `publish --retry-refused`.
int Line::sweep(core::pq::Connection& db, core::http::Client& client) {
  const auto rows = db.exec(
      "SELECT chip_id, device_id, record_json FROM journal.outbox WHERE published_at IS NULL"
      " AND refused_at IS NULL AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 64");
  int failed = 0;
  for (int i = 0; i < rows.rows() && !m_drainer_stop.load(); ++i) {
    const std::string chip = rows.text(i, 0);
    {
      std::lock_guard<std::mutex> l(m_mutex);
      if (!m_publishing.insert(chip).second) continue;
    }
    if (!publish_one(db, client, chip, rows.int64(i, 1), rows.text(i, 2))) {
      ++failed;
      break;  // the public DB is away: back off instead of trying every row
    }
  }
  return failed;
}

// A publishing lane: fresh records from the workers first; the sweeper lane also retries the rest
// with backoff. Workers never wait on the public DB (the record is durable in the outbox already).
void Line::lane(bool sweeper) {
  std::unique_ptr<core::pq::Connection> db;
  std::unique_ptr<core::http::Client> client;
  std::chrono::milliseconds pause(100);
  auto next_sweep = Clock::now();
  while (!m_drainer_stop.load()) {
    try {
      if (!db) db = std::make_unique<core::pq::Connection>(m_config.db);
      if (!client) client = make_client();
      FreshRecord fresh;
      {
        std::unique_lock<std::mutex> l(m_mutex);
        m_cv.wait_for(l, std::chrono::milliseconds(100),
                      [&] { return m_drainer_stop.load() || !m_to_publish.empty(); });
        if (!m_to_publish.empty()) {
          fresh = std::move(m_to_publish.front());
          m_to_publish.pop_front();
          if (!m_publishing.insert(fresh.chip_id).second) fresh.chip_id.clear();
        }
      }
      const std::string& chip = fresh.chip_id;
      if (!chip.empty()) {
        // Sent again if a sweep got there first: the public DB answers 200 for the same record.
        if (!publish_one(*db, *client, chip, fresh.device_id, fresh.record_json))
          client.reset();  // a fresh connection next time
        continue;
      }
      if (sweeper && Clock::now() >= next_sweep) {
        const int failed = sweep(*db, *client);
        if (failed > 0) client.reset();
        pause = failed > 0 ? std::min(std::chrono::milliseconds(5000), pause * 2) : std::chrono::milliseconds(100);
        next_sweep = Clock::now() + pause;
      }
    } catch (const core::Error&) {
      db.reset();
      client.reset();
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }
}

// Marks what the public DB accepted, many devices per statement: the lanes' marks would otherwise
// be a commit per device. A device counts as done once marked. Marks still pending when the station
// stops (or the database is away) are not lost: the outbox row stays unpublished, and the next sweep
// sends it again, which the public DB answers with 200 (the same record), and marks it then.
void Line::marker() {
  std::unique_ptr<core::pq::Connection> db;
  while (true) {
    std::vector<std::pair<std::string, std::int64_t>> batch;
    {
      std::unique_lock<std::mutex> l(m_mutex);
      m_mark_cv.wait_for(l, std::chrono::milliseconds(100), [&] { return !m_marks.empty() || m_marker_stop.load(); });
      if (m_marks.empty()) {
        if (m_marker_stop.load()) return;
        continue;
      }
      while (!m_marks.empty() && batch.size() < 1000) {
        batch.push_back(std::move(m_marks.front()));
        m_marks.pop_front();
      }
    }
    try {
      if (!db) db = std::make_unique<core::pq::Connection>(m_config.db);
      mark_published(*db, batch);
      std::lock_guard<std::mutex> l(m_mutex);
      for (const auto& [chip, id] : batch) {
        m_publishing.erase(chip);
        m_waiting.erase(chip);
        m_done.insert(chip);
      }
    } catch (const core::Error&) {
      db.reset();
      std::lock_guard<std::mutex> l(m_mutex);
      if (m_marker_stop.load()) {
        for (const auto& [chip, id] : batch) m_publishing.erase(chip);
        for (const auto& [chip, id] : m_marks) m_publishing.erase(chip);
        m_marks.clear();
        return;
      }
      m_marks.insert(m_marks.begin(), batch.begin(), batch.end());
    }
  }
}

void Line::top_up_pool(core::pq::Connection& db) {
  if (m_profile.tac.empty() || m_profile.pool_low_water <= 0) return;
  const auto n = db.exec("SELECT count(*) FROM pool.imei WHERE left(imei, 8) = $1", {m_profile.tac}).int64(0, 0);
  if (n >= m_profile.pool_low_water) return;
  const auto [first, last] = pool_generate_imeis(db, m_profile.tac, m_profile.pool_refill);
  m_pool_note = "pool topped up " + first + ".." + last;
}

void Line::progress(core::pq::Connection& db, bool final_line) {
  try {
    m_backlog = db.exec("SELECT count(*) FROM journal.outbox WHERE published_at IS NULL AND refused_at IS NULL")
                    .int64(0, 0);
  } catch (const core::Error&) {
    // The count is informative only; the next tick tries again, on a new session if this one died.
    try {
      if (!db.ok()) db.reconnect();
    } catch (const core::Error&) {
    }
  }
  std::int64_t done, failed, in_flight, waiting, left;
  {
    std::lock_guard<std::mutex> l(m_mutex);
    done = static_cast<std::int64_t>(m_done.size());
    failed = m_failed;
    in_flight = m_in_flight;
    waiting = static_cast<std::int64_t>(m_waiting.size());
    left = static_cast<std::int64_t>(m_queue.size());
  }
  const double secs = std::chrono::duration<double>(Clock::now() - m_start).count();
  const double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
  const std::int64_t target = m_options.count > 0 ? m_options.count : done + in_flight + waiting + left;
  std::ostringstream line;
  line << "done " << done << (target ? "/" + std::to_string(target) : "") << "  failed " << failed << "  in flight "
       << in_flight << "  rate " << std::fixed << std::setprecision(1) << rate << "/s";
  if (rate > 0 && target > done) line << "  ETA " << static_cast<long>(static_cast<double>(target - done) / rate) << " s";
  line << "  outbox " << m_backlog.load();
  {
    std::lock_guard<std::mutex> l(m_mutex);
    if (m_db_down_since != Clock::time_point{})
      line << "  (station database unreachable for "
           << std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - m_db_down_since).count()
           << " s: devices wait, up to --db-wait " << m_options.db_wait_ms / 1000 << " s)";
  }
  if (g_stop.load()) line << "  (stopping: finishing in-flight devices)";
  if (m_options.terminal) {
    m_out << "\r" << line.str() << "\033[K" << (final_line ? "\n" : "") << std::flush;
  } else if (final_line || Clock::now() - m_last_plain >= std::chrono::milliseconds(m_options.progress_every_ms)) {
    m_last_plain = Clock::now();
    m_out << "line: " << line.str() << (m_pool_note.empty() ? "" : "  " + m_pool_note) << "\n" << std::flush;
    m_pool_note.clear();
  }
}

LineSummary Line::run() {
  if (m_config.db.empty())
    throw core::ConfigError(core::ErrorCode::Config, "no station database: set --db or KEYLINE_STATION_DB");
  core::pq::Connection ctl(m_config.db);
  m_start = Clock::now();
  migrate_station_db(ctl);
  const int workers = std::max(1, m_profile.concurrency);
  m_keys = std::make_unique<StationKeys>(StationKeys::open(m_config, static_cast<std::size_t>(workers) + 2));
  if (!m_config.backupdb_url.empty()) {
    if (m_config.backupdb_url.rfind("https://", 0) != 0)
      throw core::ConfigError(core::ErrorCode::Config, "the public DB URL must be https:// (publishing uses mutual TLS)");
    m_tls = make_token_client_context(pki_path(m_config, pki_file::tls_trust), pki_path(m_config, pki_file::station_tls),
                                      TokenKeyRef{m_config.hsm_module, m_config.token_label, key_label::station_tls,
                                                  read_pin(m_config)});
  }
  // No publisher for the workers: a record goes to the outbox and a publishing lane sends it.
  // A worker holds a session only for the length of a statement (most of a device's time is spent on
  // the device), so a few sessions serve any number of workers, and a line of 256 fixtures fits a
  // server's default max_connections (100). Measured: 16 sessions for 64 workers cost no throughput.
  m_db = std::make_unique<core::pq::Pool>(m_config.db, static_cast<std::size_t>(std::min(workers, kDbSessions)));
  m_group = std::make_unique<core::pq::GroupCommit>(*m_db, kCommitFlushers, kCommitBatch);
  m_personalizer = std::make_unique<Personalizer>(m_config, *m_keys, nullptr);
  m_personalizer->set_app_items(m_profile.app_items);
  m_personalizer->set_step_hook([](Step s, const std::string&) { fault_point(step_name(s)); });

  // Resume first: chips this database holds unfinished rows for go to the front of the queue; chips
  // already published are not touched again.
  std::unordered_set<std::string> published, unfinished;
  {
    const auto r = ctl.exec("SELECT chip_id, state FROM journal.device WHERE state <> 'void'");
    for (int i = 0; i < r.rows(); ++i) (r.text(i, 1) == "published" ? published : unfinished).insert(r.text(i, 0));
  }
  std::unordered_set<std::string> seen;
  for (const auto& d : m_profile.devices) {
    if (!seen.insert(d.endpoint).second) continue;
    if (!d.chip_id.empty() && published.count(d.chip_id)) {
      ++m_already;
      continue;
    }
    if (!d.chip_id.empty() && unfinished.count(d.chip_id))
      m_queue.push_front({d, 1});
    else
      m_queue.push_back({d, 1});
  }
  if (m_options.terminal) m_out << "line: " << m_queue.size() << " devices, " << workers << " at once\n";

  m_start = Clock::now();
  m_last_plain = m_start;
  // Lanes: enough kept-alive connections to keep up, few enough for the public DB's threads.
  std::vector<std::thread> lanes;
  std::thread marking;
  if (m_tls) {
    const int n = std::clamp(workers / 8, 2, 8);
    for (int i = 0; i < n; ++i) lanes.emplace_back([this, i] { lane(i == 0); });
    marking = std::thread([this] { marker(); });
  }
  std::vector<std::thread> pool;
  for (int i = 0; i < workers; ++i) pool.emplace_back([this] { worker(); });

  // The calling thread watches: progress, pool top-ups, then waits for the outbox to empty.
  std::thread joiner([&] {
    for (auto& t : pool) t.join();
    m_workers_done = true;
  });
  while (!m_workers_done.load()) {
    try {
      top_up_pool(ctl);
    } catch (const core::Error& e) {
      m_pool_note = std::string("pool top-up failed: ") + e.what();
    }
    progress(ctl, false);
    std::this_thread::sleep_for(std::chrono::milliseconds(m_options.terminal ? 250 : 200));
  }
  joiner.join();
  // Every device is handled; a device is done only once published, so wait for the outbox (a stop
  // signal shortens the wait: the records stay durable for the next run or `keyline-station publish`).
  const auto wait = std::chrono::milliseconds(m_options.publish_wait_ms);
  const auto deadline = Clock::now() + wait;
  const auto stop_deadline = Clock::now() + std::min(wait, std::chrono::milliseconds(5000));
  while (m_tls && Clock::now() < (g_stop.load() ? stop_deadline : deadline)) {
    {
      std::lock_guard<std::mutex> l(m_mutex);
      if (m_waiting.empty()) break;
    }
    progress(ctl, false);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  m_drainer_stop = true;
  m_cv.notify_all();
  for (auto& t : lanes) t.join();
  m_marker_stop = true;
  m_mark_cv.notify_all();
  if (marking.joinable()) marking.join();
  progress(ctl, true);

  LineSummary s;
  try {
    s.unfinished = ctl.exec("SELECT count(*) FROM journal.device WHERE station_id = $1 AND state IN"
                            " ('claimed','issued','stored')",
                            {m_config.station_id})
                       .int64(0, 0);
  } catch (const core::Error&) {
    s.unfinished = -1;
  }
  std::lock_guard<std::mutex> l(m_mutex);
  s.done = static_cast<std::int64_t>(m_done.size()) + m_already;
  s.already_done = m_already;
  s.failed = m_failed;
  s.refused = m_refused;
  s.publishing = static_cast<std::int64_t>(m_waiting.size());
  s.skipped = static_cast<std::int64_t>(m_queue.size());
  s.seconds = std::chrono::duration<double>(Clock::now() - m_start).count();
  s.failures = m_failures;
  s.halted = m_halted;
  s.backlog = m_backlog.load();
  const auto g = m_group->stats();
  s.journal_steps = static_cast<std::int64_t>(g.statements);
  s.journal_commits = static_cast<std::int64_t>(g.batches);
  return s;
}

}  // namespace

void request_line_stop() noexcept { g_stop.store(true); }

void install_line_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  // A second Ctrl-C ends the process at once: the journal makes that as safe as kill -9.
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

LineSummary run_line(const StationConfig& config, const LineProfile& profile, const LineOptions& options,
                     std::ostream& out) {
  Line line(config, profile, options, out);
  return line.run();
}

void print_summary(const LineSummary& s, std::ostream& out) {
  const double rate = s.seconds > 0 ? static_cast<double>(s.done - s.already_done) / s.seconds : 0;
  out << "+----------------------------+------------+\n";
  const auto row = [&](const std::string& k, const std::string& v) {
    out << "| " << std::left << std::setw(26) << k << " | " << std::right << std::setw(10) << v << " |\n";
  };
  std::ostringstream r, t;
  r << std::fixed << std::setprecision(1) << rate;
  t << std::fixed << std::setprecision(1) << s.seconds;
  row("done (published)", std::to_string(s.done));
  row("  of which before this run", std::to_string(s.already_done));
  row("failed", std::to_string(s.failed));
  row("waiting in the outbox", std::to_string(s.publishing));
  row("refused by the public DB", std::to_string(s.refused));
  row("outbox backlog (all)", std::to_string(s.backlog));
  row("not started", std::to_string(s.skipped));
  row("unfinished in the journal", s.unfinished < 0 ? "?" : std::to_string(s.unfinished));
  row("journal steps", std::to_string(s.journal_steps));
  row("  in commits", std::to_string(s.journal_commits));
  row("seconds", t.str());
  row("devices/s", r.str());
  out << "+----------------------------+------------+\n";
  for (const auto& f : s.failures) out << "failed: " << f << "\n";
  if (!s.halted.empty()) out << "line halted: " << s.halted << "\n";
  if (s.unfinished > 0)
    out << s.unfinished << " device(s) stopped between claim and backup: their IMEIs stay with their chips and the "
        << "next run resumes them when they are back on a fixture (keyline-station status)\n";
}

}  // namespace keyline::station
