#include "keyline/backupdb/read_pool.h"

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

// Runs the lookup on a leased session, once more on a fresh one when the session was lost (a restarted
// server): a read is idempotent.
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
  try {
    found = run_lookup(*r.pool, lookup);
    return true;
  } catch (const core::DbError& e) {
    // Any database error on a replica (also a query cancelled by a conflict with recovery, 40001)
    // sends the read on; only a lost server takes the node out until the checker sees it again.
    ++r.failures;
    if (e.code() == core::ErrorCode::DbConnection) r.state = NodeState::Down;
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
    if (!m_primary_checker) m_primary_checker = std::make_unique<core::pq::Connection>(m_primary_conninfo);
    const auto lsn = static_cast<std::uint64_t>(m_primary_checker->exec(kPrimaryLsn).int64(0, 0));
    const auto now = Clock::now();
    m_samples.push_back({now, lsn});
    // A replica behind every kept sample is behind by more than the bound anyway.
    const auto keep = std::chrono::milliseconds(m_settings.max_lag_ms) + std::chrono::seconds(2);
    while (m_samples.size() > 1 && now - m_samples.front().at > keep) m_samples.pop_front();
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

void ReadPool::check_replica(Replica& r, const std::optional<std::uint64_t>& primary) {
  try {
    if (!r.checker) r.checker = std::make_unique<core::pq::Connection>(r.conninfo);
    const auto replayed = static_cast<std::uint64_t>(r.checker->exec(kReplicaLsn).int64(0, 0));
    // With the primary unreachable the lag cannot be measured: the last figure stands.
    if (primary) r.lag_us = lag_behind(replayed).count();
    r.state = r.lag_us > std::int64_t{m_settings.max_lag_ms} * 1000 ? NodeState::Lagging : NodeState::Up;
  } catch (const core::DbError&) {
    r.checker.reset();
    r.state = NodeState::Down;
  }
}

void ReadPool::check() {
  std::lock_guard<std::mutex> g(m_check_mutex);
  const auto primary = primary_lsn();
  for (auto& r : m_replicas) check_replica(*r, primary);
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
