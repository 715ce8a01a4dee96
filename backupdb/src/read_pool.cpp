#include "keyline/backupdb/read_pool.h"

#include <algorithm>
#include <sstream>

#include "keyline/core/error.h"

namespace keyline::backupdb {
namespace {

using Clock = std::chrono::steady_clock;

// The WAL position as a byte count. A standby reports what it has replayed (PostgreSQL 15 manual,
// table 9.89): what it received but not yet applied is not visible to its readers.
constexpr const char* kPrimaryLsn = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint";
constexpr const char* kReplicaLsn =
    "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END "
    "- '0/0'::pg_lsn)::bigint";

// At most this many primary WAL samples are kept (a replica paused for hours under writes): 16 bytes
// each, one per check that saw new WAL.
constexpr std::size_t kMaxSamples = 1 << 16;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// Runs the lookup on a leased session, once more on a fresh one when the session was lost (a restarted
// server): a read is idempotent. The primary's lookups have no deadline: it is the last node, and
// one that is gone fails its reads (and the writes) anyway.
bool run_lookup(core::pq::Pool& pool, const ReadPool::Lookup& lookup) {
  auto lease = pool.acquire();
  try {
    return lookup(*lease);
  } catch (const core::DbError& e) {
    if (e.code() != core::ErrorCode::DbConnection) throw;
    lease->reconnect();
    return lookup(*lease);
  }
}

}  // namespace

const char* state_name(NodeState s) {
  switch (s) {
    case NodeState::Up:
      return "up";
    case NodeState::Lagging:
      return "lagging";
    case NodeState::Down:
      break;
  }
  return "down";
}

ReadPool::ReadPool(core::pq::Pool& primary, const std::string& primary_conninfo, const ReplicaSettings& settings,
                   std::size_t pool_size)
    : m_primary(primary), m_primary_conninfo(primary_conninfo), m_settings(settings) {
  if (m_settings.check_ms < 1 || m_settings.check_ms > 1000 || m_settings.max_lag_ms < 1)
    throw core::ConfigError(core::ErrorCode::Config, "replica checks run every 1..1000 ms, with a positive lag bound");
  if (m_settings.timeout_ms < 1 || m_settings.timeout_ms > 60000)
    throw core::ConfigError(core::ErrorCode::Config, "the replica timeout is 1..60000 ms");
  for (std::size_t i = 0; i < m_settings.conninfos.size(); ++i) {
    auto r = std::make_unique<Replica>();
    r->name = "replica" + std::to_string(i);
    r->conninfo = m_settings.conninfos[i];
    r->pool = std::make_unique<core::pq::Pool>(r->conninfo, pool_size);
    m_replicas.push_back(std::move(r));
  }
  if (m_replicas.empty()) return;
  check();  // replicas take reads from the start, not one period later
  m_thread = std::thread([this] { run(); });
}

ReadPool::~ReadPool() {
  {
    std::lock_guard<std::mutex> g(m_stop_mutex);
    m_stop = true;
  }
  m_stop_cv.notify_all();
  if (m_thread.joinable()) m_thread.join();
}

bool ReadPool::on_replica(Replica& r, const Lookup& lookup, bool& found) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(m_settings.timeout_ms);
  try {
    // Every session out until the deadline: the node is busy, not known broken; the read moves on.
    auto lease = r.pool->try_acquire(deadline);
    if (!lease) {
      ++r.failures;
      return false;
    }
    // Marked down while this worker waited (another read timed out on it): not one more try.
    if (r.state != NodeState::Up) return false;
    try {
      found = lookup(**lease);
    } catch (const core::DbError& e) {
      if (e.code() != core::ErrorCode::DbConnection) throw;
      (*lease)->reconnect();  // a restarted server: within the same deadline
      found = lookup(**lease);
    }
    return true;
  } catch (const core::DbError& e) {
    // Any database error on a replica (also a query cancelled by a conflict with recovery, 40001)
    // sends the read on; a lost or silent server (DbConnection, Timeout: the lease's session is
    // closed and dropped) takes the node out until the checker has an answer from it again.
    ++r.failures;
    if (e.code() == core::ErrorCode::DbConnection || e.code() == core::ErrorCode::Timeout) r.state = NodeState::Down;
    return false;
  }
}

bool ReadPool::on_primary(const Lookup& lookup) {
  ++m_primary_reads;
  return run_lookup(m_primary, lookup);
}

bool ReadPool::read(const Lookup& lookup) {
  const std::size_t n = m_replicas.size();
  const std::size_t first = n == 0 ? 0 : m_next++ % n;
  for (std::size_t i = 0; i < n; ++i) {
    Replica& r = *m_replicas[(first + i) % n];
    if (r.state != NodeState::Up) continue;
    bool found = false;
    if (!on_replica(r, lookup, found)) continue;
    if (found) {
      ++r.reads;
      return true;
    }
    // Read-your-writes: the row may have committed on the primary after this replica's replay
    // position. Another replica is no surer, so the primary decides.
    ++r.misses;
    break;
  }
  return on_primary(lookup);
}

std::optional<std::uint64_t> ReadPool::primary_lsn() {
  try {
    const auto deadline = Clock::now() + std::chrono::milliseconds(m_settings.timeout_ms);
    if (!m_primary_checker) m_primary_checker = std::make_unique<core::pq::Connection>(m_primary_conninfo, deadline);
    m_primary_checker->set_deadline(deadline);
    const auto lsn = static_cast<std::uint64_t>(m_primary_checker->exec(kPrimaryLsn).int64(0, 0));
    // Only a position's first sighting counts (lag_behind), so an idle primary adds no sample.
    if (m_samples.empty() || m_samples.back().lsn != lsn) m_samples.push_back({Clock::now(), lsn});
    return lsn;
  } catch (const core::DbError&) {
    m_primary_checker.reset();
    return std::nullopt;
  }
}

// How long ago the primary first wrote WAL the replica has not replayed: the time of the oldest
// sample beyond `replayed`. Measured on this process's clock, so it needs no clock agreement
// between the servers, and an idle primary (no new WAL) never makes a replica look late, which
// pg_last_xact_replay_timestamp alone would.
std::chrono::microseconds ReadPool::lag_behind(std::uint64_t replayed) const {
  for (const auto& s : m_samples) {
    if (s.lsn > replayed)
      return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - s.at);
  }
  return std::chrono::microseconds(0);
}

// A sample can go once no replica still needs it: it is the first beyond a replica's replay position
// only while that replica has not replayed it. Samples older than the bound's window are kept for a
// replica that lags, so its lag keeps growing as long as its replay stays behind (dropping them by
// age alone capped the figure at max_lag + 2 s). A down replica holds none back: back up, it is
// measured against what is kept, which is at least the window, so it shows lagging, not up.
void ReadPool::prune_samples() {
  std::optional<std::uint64_t> slowest;
  for (const auto& r : m_replicas)
    if (r->state != NodeState::Down && r->replayed) slowest = std::min(slowest.value_or(*r->replayed), *r->replayed);
  const auto now = Clock::now();
  const auto window = std::chrono::milliseconds(m_settings.max_lag_ms) + std::chrono::seconds(2);
  while (m_samples.size() > 1 &&
         (m_samples.size() > kMaxSamples ||
          (now - m_samples.front().at > window && (!slowest || m_samples.front().lsn <= *slowest))))
    m_samples.pop_front();
}

void ReadPool::check_replica(Replica& r, const std::optional<std::uint64_t>& primary) {
  try {
    const auto deadline = Clock::now() + std::chrono::milliseconds(m_settings.timeout_ms);
    if (!r.checker) r.checker = std::make_unique<core::pq::Connection>(r.conninfo, deadline);
    r.checker->set_deadline(deadline);
    const auto replayed = static_cast<std::uint64_t>(r.checker->exec(kReplicaLsn).int64(0, 0));
    r.replayed = replayed;
    r.checked_at_ns = now_ns();
    // With the primary unreachable the lag cannot be measured: the last figure stands.
    if (primary) r.lag_us = lag_behind(replayed).count();
    r.state = r.lag_us > std::int64_t{m_settings.max_lag_ms} * 1000 ? NodeState::Lagging : NodeState::Up;
  } catch (const core::DbError&) {
    // Refused, lost, or no answer within the deadline (Timeout): down until it answers again.
    r.checker.reset();
    r.state = NodeState::Down;
  }
}

void ReadPool::check() {
  std::lock_guard<std::mutex> g(m_check_mutex);
  const auto primary = primary_lsn();
  for (auto& r : m_replicas) check_replica(*r, primary);
  prune_samples();
}

void ReadPool::run() {
  std::unique_lock<std::mutex> g(m_stop_mutex);
  while (!m_stop) {
    g.unlock();
    check();
    g.lock();
    m_stop_cv.wait_for(g, std::chrono::milliseconds(m_settings.check_ms), [this] { return m_stop; });
  }
}

std::vector<NodeStats> ReadPool::stats() const {
  std::vector<NodeStats> out;
  NodeStats p;
  p.name = "primary";
  p.reads = m_primary_reads;
  out.push_back(p);
  for (const auto& r : m_replicas) {
    NodeStats n;
    n.name = r->name;
    n.state = r->state;
    // Belt and braces: a node the checker has had no answer from for several rounds is down whatever
    // it was last seen as (every check is bounded by the deadline, so this is not expected to trigger).
    const auto round_ns = (std::int64_t{m_settings.check_ms} +
                           2 * std::int64_t{m_settings.timeout_ms} * static_cast<std::int64_t>(m_replicas.size() + 1)) *
                          1000000;
    if (n.state != NodeState::Down && now_ns() - r->checked_at_ns.load() > 3 * round_ns) n.state = NodeState::Down;
    n.lag_seconds = static_cast<double>(r->lag_us.load()) / 1e6;
    n.reads = r->reads;
    n.misses = r->misses;
    n.failures = r->failures;
    out.push_back(n);
  }
  return out;
}

std::string ReadPool::render_metrics() const {
  const auto nodes = stats();
  std::ostringstream o;
  const auto series = [&](const char* name, const char* type, const char* help, auto value, bool replicas_only) {
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
    for (const auto& n : nodes) {
      if (replicas_only && n.name == "primary") continue;
      o << name << "{node=\"" << n.name << "\"} " << value(n) << '\n';
    }
  };
  series("keyline_backupdb_db_reads_total", "counter", "Record and tile lookups answered, by database node.",
         [](const NodeStats& n) { return n.reads; }, false);
  series("keyline_backupdb_db_read_misses_total", "counter",
         "Lookups a replica had no row for, asked again of the primary (read-your-writes).",
         [](const NodeStats& n) { return n.misses; }, true);
  series("keyline_backupdb_db_read_failures_total", "counter", "Lookups that failed on a replica and went on.",
         [](const NodeStats& n) { return n.failures; }, true);
  series("keyline_backupdb_db_replica_lag_seconds", "gauge", "How far behind the primary the checker last saw it.",
         [](const NodeStats& n) { return n.lag_seconds; }, true);
  o << "# HELP keyline_backupdb_db_replica_state 1 for the state the checker last found (up takes reads).\n"
       "# TYPE keyline_backupdb_db_replica_state gauge\n";
  for (const auto& n : nodes) {
    if (n.name == "primary") continue;
    for (const auto s : {NodeState::Up, NodeState::Lagging, NodeState::Down})
      o << "keyline_backupdb_db_replica_state{node=\"" << n.name << "\",state=\"" << state_name(s) << "\"} "
        << (n.state == s ? 1 : 0) << '\n';
  }
  return o.str();
}

}  // namespace keyline::backupdb
