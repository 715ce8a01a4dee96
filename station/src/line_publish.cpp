// The line's publishing lanes: kept-alive mutual-TLS connections that send the workers' fresh records,
// one of them also sweeping the outbox; and the marker that marks what the public DB accepted.
#include <algorithm>
#include <mutex>
#include <unordered_map>

#include "keyline/core/error.h"
#include "keyline/station/errors.h"
#include "keyline/station/fault_hook.h"
#include "keyline/station/outbox_log.h"
#include "keyline/station/publisher.h"
#include "line_engine.h"

namespace keyline::station::line_detail {

namespace {

// The leaf indexes the public DB answered (docs/transparency.md "Clients"), from the lanes to the
// marker, which writes them with its batch: a lane's mark carries only the chip and the journal row.
// Keyed by chip ID, so lines in one process (the tests) cannot mix them up.
class LeafIndexes {
 public:
  void put(const std::string& chip, std::uint64_t leaf) {
    std::lock_guard<std::mutex> l(m_mutex);
    m_leaves[chip] = leaf;
  }
  std::vector<std::pair<std::string, std::uint64_t>> take(const std::vector<std::pair<std::string, std::int64_t>>& batch) {
    std::vector<std::pair<std::string, std::uint64_t>> out;
    std::lock_guard<std::mutex> l(m_mutex);
    for (const auto& mark : batch) {
      const auto it = m_leaves.find(mark.first);
      if (it == m_leaves.end()) continue;
      out.emplace_back(it->first, it->second);
      m_leaves.erase(it);
    }
    return out;
  }

 private:
  std::mutex m_mutex;
  std::unordered_map<std::string, std::uint64_t> m_leaves;
};

LeafIndexes& leaf_indexes() {
  static LeafIndexes l;
  return l;
}

// The label of keyline_station_publish_total (docs/station.md, "Metrics and the line page").
const char* outcome_name(PublishOutcome o) {
  switch (o) {
    case PublishOutcome::Published: return "published";
    case PublishOutcome::AlreadyPublished: return "already-published";
    case PublishOutcome::Rejected: return "rejected";
    case PublishOutcome::Refused: return "refused";
    case PublishOutcome::Unreachable: return "unreachable";
  }
  return "unreachable";
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

// Lanes: enough kept-alive connections to keep up, few enough for the public DB's threads.
void Line::start_lanes(int workers) {
  if (!m_tls) return;
  const int n = std::clamp(workers / 8, 2, 8);
  for (int i = 0; i < n; ++i) m_lanes.emplace_back([this, i] { lane(i == 0); });
  m_marking = std::thread([this] { marker(); });
}

void Line::stop_lanes() {
  m_drainer_stop = true;
  m_cv.notify_all();
  for (auto& t : m_lanes) t.join();
  m_marker_stop = true;
  m_mark_cv.notify_all();
  if (m_marking.joinable()) m_marking.join();
}

std::unique_ptr<core::http::Client> Line::make_client() const {
  core::http::ClientOptions opt;
  opt.base_url = m_config.backupdb_url;
  {
    std::lock_guard<std::mutex> l(m_mutex);  // a failover replaces it (failover.cpp)
    opt.context = m_tls;
  }
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
  const auto sent_at = Clock::now();
  try {
    const auto r = client.post("/v1/records", record_json, "application/json");
    const auto outcome = publish_outcome(r.status);
    m_metrics.publish_answered(r.status, outcome_name(outcome), seconds_since(sent_at));
    ok = outcome == PublishOutcome::Published || outcome == PublishOutcome::AlreadyPublished;
    refused = outcome == PublishOutcome::Refused;
    if (!ok) detail = problem_summary(r.status, r.body);
    if (const auto leaf = ok ? publish_leaf_index(r.body) : std::nullopt) leaf_indexes().put(chip, *leaf);
  } catch (const core::Error& e) {
    detail = e.what();
    m_metrics.publish_answered(0, outcome_name(PublishOutcome::Unreachable), seconds_since(sent_at));
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
      m_metrics.device_failed(static_cast<int>(errc::PublishRejected), chip);
      const auto it = m_chip_reader.find(chip);
      if (it != m_chip_reader.end()) ++m_readers[static_cast<std::size_t>(it->second)].failed;
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
  int tls_switches = 0;
  while (!m_drainer_stop.load()) {
    try {
      if (!db) db = std::make_unique<core::pq::Connection>(m_config.db);
      if (client && tls_switches != m_tls_switches.load()) client.reset();  // the secondary's identity now
      if (!client) {
        tls_switches = m_tls_switches.load();
        client = make_client();
      }
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
      // A leaf index not written here (the database went away) is read back by `outbox check-log`.
      store_leaf_indexes(*db, leaf_indexes().take(batch));
      std::lock_guard<std::mutex> l(m_mutex);
      for (const auto& [chip, id] : batch) {
        m_publishing.erase(chip);
        note_done(chip);
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


}  // namespace keyline::station::line_detail
