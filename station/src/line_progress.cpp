// The line's progress line, pool top-ups and summary.
#include <algorithm>
#include <cctype>
#include <iomanip>
#include <sstream>

#include "keyline/core/error.h"
#include "keyline/core/event_log.h"
#include "keyline/core/http.h"
#include "keyline/station/pool.h"
#include "line_engine.h"

namespace keyline::station {

namespace line_detail {

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
  publish_status(m_backlog.load());
  line << readers_progress();
  std::vector<std::string> notes;
  {
    std::lock_guard<std::mutex> l(m_mutex);
    notes.swap(m_reader_notes);
  }
  // Reader events (removed, added, mute) are said once, on a line of their own.
  for (const auto& n : notes) m_out << (m_options.terminal ? "\r" : "") << "line: " << n << (m_options.terminal ? "\033[K\n" : "\n");
  if (m_options.terminal) {
    m_out << "\r" << line.str() << "\033[K" << (final_line ? "\n" : "") << std::flush;
  } else if (final_line || !notes.empty() ||
             Clock::now() - m_last_plain >= std::chrono::milliseconds(m_options.progress_every_ms)) {
    m_last_plain = Clock::now();
    m_out << "line: " << line.str() << (m_pool_note.empty() ? "" : "  " + m_pool_note) << "\n" << std::flush;
    m_pool_note.clear();
  }
}

// Called with m_mutex held: devices published per reader.
std::vector<std::int64_t> Line::reader_done() const {
  std::vector<std::int64_t> done(m_readers.size(), 0);
  for (const auto& [chip, reader] : m_chip_reader)
    if (m_done.count(chip)) ++done[static_cast<std::size_t>(reader)];
  return done;
}

// "  readers: NAME done/failed state | ..." for a line on readers, else nothing.
std::string Line::readers_progress() const {
  std::lock_guard<std::mutex> l(m_mutex);
  if (m_readers.empty()) return {};
  const auto done = reader_done();
  std::ostringstream o;
  o << "  readers:";
  for (std::size_t i = 0; i < m_readers.size(); ++i) {
    const auto& r = m_readers[i];
    o << (i ? " |" : "") << " " << r.name << " " << done[i] << "/" << r.failed << " " << reader_state(r);
  }
  return o.str();
}

// Before anything is opened: a listener that cannot bind ends the run before any claim.
void Line::start_status() {
  set_token_metrics(&m_metrics);
  if (m_options.ops_listen.empty() && m_options.status_listen.empty()) return;
  m_status = std::make_unique<StatusServers>(m_options.ops_listen, m_options.status_listen, m_metrics, m_out);
}

namespace {

std::string q(const std::string& s) { return "\"" + core::http::json_escape(s) + "\""; }

// The error code a failure line names ("...: error 4011: ..."), or "" (a refused record: 4020).
std::string failure_reason(const std::string& line) {
  if (line.find("public DB refused the record") != std::string::npos) return "4020";
  const auto at = line.find("error ");
  if (at == std::string::npos) return {};
  std::string code;
  for (std::size_t i = at + 6; i < line.size() && std::isdigit(static_cast<unsigned char>(line[i])); ++i)
    code += line[i];
  return code;
}

void gauge(std::ostream& o, const char* name, const char* text, double value) {
  o << "# HELP " << name << " " << text << "\n# TYPE " << name << " gauge\n" << name << " " << value << "\n";
}

}  // namespace

// The fixtures as JSON objects: a line on readers shows every reader, a TCP line the fixtures its
// workers took (busiest first, at most 256).
std::string Line::status_fixtures() const {
  std::vector<FixtureView> list;
  if (reader_mode()) {
    std::lock_guard<std::mutex> l(m_mutex);
    const auto done = reader_done();
    for (std::size_t i = 0; i < m_readers.size(); ++i)
      list.push_back(
          {m_readers[i].name, reader_state(m_readers[i]), "", "", "", done[i], m_readers[i].failed});
  } else {
    list = m_metrics.fixtures(256);
  }
  std::ostringstream o;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const auto& f = list[i];
    o << (i ? "," : "") << "{\"name\":" << q(f.name) << ",\"state\":" << q(f.state)
      << ",\"step\":" << q(f.step) << ",\"chip\":" << q(f.chip) << ",\"imei\":" << q(f.imei)
      << ",\"done\":" << f.done << ",\"failed\":" << f.failed << "}";
  }
  return o.str();
}

// The page's snapshot: counts, rate and ETA as the progress line has them, the fixtures and the last
// failures with their reasons. Chip IDs and IMEIs only: no key, PIN or package ever reaches it.
std::string Line::status_json(std::int64_t backlog, std::int64_t& ended) const {
  std::int64_t done, failed, in_flight, waiting, left;
  std::vector<std::string> failures;
  std::string halted;
  double db_down = 0;
  {
    std::lock_guard<std::mutex> l(m_mutex);
    done = static_cast<std::int64_t>(m_done.size());
    failed = m_failed;
    in_flight = m_in_flight;
    waiting = static_cast<std::int64_t>(m_waiting.size());
    left = static_cast<std::int64_t>(m_queue.size());
    const std::size_t from = m_failures.size() > 20 ? m_failures.size() - 20 : 0;
    failures.assign(m_failures.begin() + static_cast<std::ptrdiff_t>(from), m_failures.end());
    halted = m_halted;
    if (m_db_down_since != Clock::time_point{})
      db_down = std::chrono::duration<double>(Clock::now() - m_db_down_since).count();
  }
  ended = done + failed;
  const double secs = std::chrono::duration<double>(Clock::now() - m_start).count();
  const double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
  // Every device of the run, the failed ones too (the progress line counts what can still be done).
  const std::int64_t target =
      m_options.count > 0 ? m_options.count : done + failed + in_flight + waiting + left;
  std::ostringstream o;
  o << std::fixed << std::setprecision(2);
  o << "{\"time\":" << q(core::http::utc_timestamp()) << ",\"elapsed_s\":" << secs << ",\"done\":" << done
    << ",\"failed\":" << failed << ",\"in_flight\":" << in_flight << ",\"waiting\":" << waiting
    << ",\"queued\":" << left << ",\"target\":" << target << ",\"rate\":" << rate << ",\"eta_s\":";
  if (rate > 0 && target > done + failed)
    o << static_cast<double>(target - done - failed) / rate;
  else
    o << "null";
  o << ",\"outbox\":" << backlog << ",\"stopping\":" << (g_stop.load() ? "true" : "false")
    << ",\"db_down_s\":" << db_down << ",\"halted\":" << q(halted)
    << ",\"readers\":" << (reader_mode() ? "true" : "false") << ",\"fixtures\":[" << status_fixtures()
    << "],\"failures\":[";
  // Newest first.
  for (std::size_t i = 0; i < failures.size(); ++i) {
    const auto& f = failures[failures.size() - 1 - i];
    o << (i ? "," : "") << "{\"reason\":" << q(failure_reason(f)) << ",\"text\":" << q(f.substr(0, 600))
      << "}";
  }
  o << "]}";
  return o.str();
}

// From progress() (the line's own thread, every 200 ms or so): the page and /metrics read this copy.
void Line::publish_status(std::int64_t backlog) {
  if (!m_status) return;
  std::int64_t ended = 0;
  std::string json = status_json(backlog, ended);
  std::int64_t in_flight, waiting, left;
  bool halted, db_down;
  {
    std::lock_guard<std::mutex> l(m_mutex);
    in_flight = m_in_flight;
    waiting = static_cast<std::int64_t>(m_waiting.size());
    left = static_cast<std::int64_t>(m_queue.size());
    halted = !m_halted.empty();
    db_down = m_db_down_since != Clock::time_point{};
  }
  std::ostringstream g;
  gauge(g, "keyline_station_devices_in_flight", "Devices a worker has in hand.",
        static_cast<double>(in_flight));
  gauge(g, "keyline_station_devices_waiting", "Devices of this run whose record waits in the outbox.",
        static_cast<double>(waiting));
  gauge(g, "keyline_station_devices_queued", "Devices not started yet.", static_cast<double>(left));
  gauge(g, "keyline_station_outbox_backlog",
        "Unpublished, unparked outbox rows (every station of the database).", static_cast<double>(backlog));
  gauge(g, "keyline_station_line_halted", "1 when the line stopped starting devices (pool empty, key sets).",
        halted ? 1 : 0);
  gauge(g, "keyline_station_db_unreachable", "1 while the station database is away.", db_down ? 1 : 0);
  gauge(g, "keyline_station_line_stopping", "1 after SIGINT or SIGTERM: in-flight devices finish.",
        g_stop.load() ? 1 : 0);
  m_status->publish(std::move(json), g.str(), ended);
}

LineSummary Line::summarize(core::pq::Connection& ctl) {
  LineSummary s;
  try {
    // With a secondary token: its rows too (a station of its own, failover.cpp).
    s.unfinished = ctl.exec("SELECT count(*) FROM journal.device WHERE station_id IN ($1, $2) AND state IN"
                            " ('claimed','issued','stored')",
                            {m_config.station_id, m_secondary ? m_secondary->config.station_id : m_config.station_id})
                       .int64(0, 0);
  } catch (const core::Error&) {
    s.unfinished = -1;
  }
  std::lock_guard<std::mutex> l(m_mutex);
  s.done = static_cast<std::int64_t>(m_done.size()) + m_already;
  s.already_done = m_already;
  s.failed = m_failed;
  s.chips_refused = m_chips_refused;
  s.channel = m_config.channel;
  s.key_source = m_config.key_source;
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
  const auto done = reader_done();
  for (std::size_t i = 0; i < m_readers.size(); ++i)
    s.readers.push_back({m_readers[i].name, m_readers[i].taken, done[i], m_readers[i].failed, reader_state(m_readers[i])});
  summarize_failover(s);
  return s;
}

}  // namespace line_detail

namespace {

void print_reader_table(const std::vector<ReaderSummary>& readers, std::ostream& out) {
  if (readers.empty()) return;
  std::size_t w = 6;
  for (const auto& r : readers) w = std::max(w, r.reader.size());
  out << std::left << std::setw(static_cast<int>(w)) << "reader" << "  " << std::right << std::setw(6) << "cards"
      << "  " << std::setw(6) << "done" << "  " << std::setw(6) << "failed" << "  state\n";
  for (const auto& r : readers)
    out << std::left << std::setw(static_cast<int>(w)) << r.reader << "  " << std::right << std::setw(6) << r.taken
        << "  " << std::setw(6) << r.done << "  " << std::setw(6) << r.failed << "  " << r.state << "\n";
}

}  // namespace

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
  row("  of which chips refused", std::to_string(s.chips_refused));
  row("channel", s.channel);
  row("key source", s.key_source);
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
  print_reader_table(s.readers, out);
  print_failover_summary(s, out);
  for (const auto& f : s.failures) out << "failed: " << f << "\n";
  if (!s.halted.empty()) out << "line halted: " << s.halted << "\n";
  if (s.unfinished > 0)
    out << s.unfinished << " device(s) stopped between claim and backup: their IMEIs stay with their chips and the "
        << "next run resumes them when they are back on a fixture (keyline-station status)\n";
}

}  // namespace keyline::station
