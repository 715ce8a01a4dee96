// The line's run from start to end (line_engine.h names the files of the other parts).
#include <algorithm>
#include <csignal>

#include "keyline/core/error.h"
#include "keyline/station/fault_hook.h"
#include "keyline/station/pool.h"
#include "keyline/station/tls_token_key.h"
#include "line_engine.h"

namespace keyline::station {

namespace line_detail {

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the stop flag is set from a signal handler");

namespace {
extern "C" void on_stop_signal(int) { request_line_stop(); }
}  // namespace

Line::Line(const StationConfig& config, const LineProfile& profile, const LineOptions& options, std::ostream& out)
    : m_config(config), m_profile(profile), m_options(options), m_out(out) {
  m_config.publish_attempts = 1;
  if (!profile.key_source.empty()) m_config.key_source = profile.key_source;
}

// Called with m_mutex held: --count devices are done, in flight or waiting in the outbox.
bool Line::count_reached() const {
  return m_options.count > 0 && static_cast<std::int64_t>(m_done.size()) + m_in_flight +
                                        static_cast<std::int64_t>(m_waiting.size()) >=
                                    m_options.count;
}

bool Line::want_more() const {
  if (g_stop.load() || m_halt.load() || m_readers_end.load()) return false;
  std::lock_guard<std::mutex> l(m_mutex);
  return !count_reached();
}

int Line::worker_count() const {
  const int n = std::max(1, m_profile.concurrency);
  // One device at a time per reader, and no reader waits for a worker.
  return reader_mode() ? std::max(n, static_cast<int>(m_readers.size())) : n;
}

// The station database, the token(s), the TLS context of the lanes and the personalizer(s).
void Line::open() {
  const int workers = worker_count();
  if (!m_config.backupdb_url.empty() && m_config.backupdb_url.rfind("https://", 0) != 0)
    throw core::ConfigError(core::ErrorCode::Config, "the public DB URL must be https:// (publishing uses mutual TLS)");
  m_publishing_on = !m_config.backupdb_url.empty();
  const auto sessions = static_cast<std::size_t>(workers) + 2;
  m_station = open_station(0, m_config, sessions);
  if (!m_options.secondary_token.empty()) open_secondary(sessions);
  m_tls = m_station->tls;
  // No publisher for the workers: a record goes to the outbox and a publishing lane sends it.
  // A worker holds a session only for the length of a statement (most of a device's time is spent on
  // the device), so a few sessions serve any number of workers, and a line of 256 fixtures fits a
  // server's default max_connections (100). Measured: 16 sessions for 64 workers cost no throughput.
  m_db = std::make_unique<core::pq::Pool>(m_config.db, static_cast<std::size_t>(std::min(workers, kDbSessions)));
  m_group = std::make_unique<core::pq::GroupCommit>(*m_db, kCommitFlushers, kCommitBatch);
}

// Resume first: chips this database holds unfinished rows for go to the front of the queue; chips
// already published are not touched again.
void Line::fill_queue(core::pq::Connection& ctl) {
  std::unordered_set<std::string> published, unfinished;
  const auto r = ctl.exec("SELECT chip_id, state FROM journal.device WHERE state <> 'void'");
  for (int i = 0; i < r.rows(); ++i) (r.text(i, 1) == "published" ? published : unfinished).insert(r.text(i, 0));
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
}

// The calling thread watches: progress and pool top-ups until the workers are done.
void Line::watch_until_workers_end(core::pq::Connection& ctl, std::vector<std::thread>& workers) {
  std::thread joiner([&] {
    for (auto& t : workers) t.join();
    m_workers_done = true;
  });
  while (!m_workers_done.load()) {
    try {
      top_up_pool(ctl);
    } catch (const core::Error& e) {
      m_pool_note = std::string("pool top-up failed: ") + e.what();
    }
    if (reader_mode() && readers_finished()) {
      m_readers_end = true;
      m_cv.notify_all();
    }
    progress(ctl, false);
    std::this_thread::sleep_for(std::chrono::milliseconds(m_options.terminal ? 250 : 200));
  }
  joiner.join();
}

// Every device is handled; a device is done only once published, so wait for the outbox (a stop
// signal shortens the wait: the records stay durable for the next run or `keyline-station publish`).
void Line::wait_for_outbox(core::pq::Connection& ctl) {
  const auto wait = std::chrono::milliseconds(m_options.publish_wait_ms);
  const auto deadline = Clock::now() + wait;
  const auto stop_deadline = Clock::now() + std::min(wait, std::chrono::milliseconds(5000));
  while (m_publishing_on && Clock::now() < (g_stop.load() ? stop_deadline : deadline)) {
    {
      std::lock_guard<std::mutex> l(m_mutex);
      if (m_waiting.empty()) break;
    }
    progress(ctl, false);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

LineSummary Line::run() {
  if (m_config.db.empty())
    throw core::ConfigError(core::ErrorCode::Config, "no station database: set --db or KEYLINE_STATION_DB");
  // Readers first: pcscd away or no reader matching is said before anything is opened or claimed.
  if (reader_mode()) open_readers();
  core::pq::Connection ctl(m_config.db);
  migrate_station_db(ctl);
  start_status();
  open();
  fill_queue(ctl);
  const int workers = worker_count();
  if (m_options.terminal) {
    if (reader_mode())
      m_out << "line: " << m_readers.size() << " readers, " << workers << " workers; waiting for cards\n";
    else
      m_out << "line: " << m_queue.size() << " devices, " << workers << " at once\n";
  }
  m_start = Clock::now();
  m_last_plain = m_start;
  m_last_activity = m_start;
  start_lanes(workers);
  if (reader_mode()) start_watcher();
  std::vector<std::thread> pool;
  for (int i = 0; i < workers; ++i) pool.emplace_back([this] { worker(); });
  watch_until_workers_end(ctl, pool);
  if (reader_mode()) stop_watcher();
  wait_for_outbox(ctl);
  stop_lanes();
  progress(ctl, true);
  return summarize(ctl);
}

}  // namespace line_detail

void request_line_stop() noexcept { line_detail::g_stop.store(true); }

void install_line_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = line_detail::on_stop_signal;
  // A second Ctrl-C ends the process at once: the journal makes that as safe as kill -9.
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

LineSummary run_line(const StationConfig& config, const LineProfile& profile, const LineOptions& options,
                     std::ostream& out) {
  line_detail::Line line(config, profile, options, out);
  return line.run();
}

}  // namespace keyline::station
