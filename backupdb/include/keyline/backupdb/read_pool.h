// Read routing over PostgreSQL streaming replicas (docs/api.md, "Database and permanence"): reads go to
// a replica that is up and not lagging, in turn; writes never come here (they stay on the primary's
// pool). A replica that fails a read, or that the checker finds down or lagging past the bound, is
// skipped; the primary answers last. A replica that has no row for a lookup is not trusted with the
// "absent": the primary is asked too, so a record read right after its 201 never 404s (records and
// tiles are immutable, so a row a replica does have is always the primary's row). Every replica
// statement, and the checker's, has a deadline (timeout_ms): a replica that goes silent (stopped,
// partitioned: its kernel still ACKs, so TCP never fails) costs a read that much once, is marked down
// at once and the read goes on to the next node; it is never waited for without bound.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "keyline/core/pq.h"

namespace keyline::backupdb {

struct ReplicaSettings {
  std::vector<std::string> conninfos;  // serve --replica, in order: nodes "replica0", "replica1", ...
  int max_lag_ms = 1000;               // serve --max-replica-lag-ms: skipped beyond this
  int check_ms = 250;                  // how often the checker looks (at most 1 s)
  int timeout_ms = 500;                // serve --replica-timeout-ms: a replica read or check gives up (a lookup takes < 1 ms)
};

enum class NodeState { Up, Lagging, Down };
const char* state_name(NodeState s);  // "up", "lagging", "down": /metrics and /healthz

struct NodeStats {
  std::string name;  // "primary", "replica0", ...
  NodeState state = NodeState::Up;
  double lag_seconds = 0;       // replicas: how far behind the primary the checker last saw it
  std::uint64_t reads = 0;      // lookups this node answered (found or, on the primary, absent)
  std::uint64_t misses = 0;     // replicas: lookups it had no row for, asked again of the primary
  std::uint64_t failures = 0;   // lookups that failed on it and went on to the next node
};

class ReadPool {
 public:
  // A lookup on one session: true when it found its row (the caller keeps the row).
  using Lookup = std::function<bool(core::pq::Connection&)>;

  // `primary` is the store's pool, shared with the writes. Each replica gets a pool of `pool_size`
  // sessions and the checker a session of its own per node; the checker starts when there are replicas.
  ReadPool(core::pq::Pool& primary, const std::string& primary_conninfo, const ReplicaSettings& settings,
           std::size_t pool_size);
  ~ReadPool();
  ReadPool(const ReadPool&) = delete;
  ReadPool& operator=(const ReadPool&) = delete;

  // Runs `lookup` on the next usable replica, on others while one fails, and on the primary when
  // none is left or a replica found nothing. Throws the primary's DbError when the primary fails too.
  bool read(const Lookup& lookup);
  // One round of the checker now (tests; the thread runs one every check_ms).
  void check();
  std::vector<NodeStats> stats() const;
  std::string render_metrics() const;  // Prometheus text, one series per node
  std::size_t replicas() const { return m_replicas.size(); }

 private:
  struct Replica {
    std::string name;
    std::string conninfo;
    std::unique_ptr<core::pq::Pool> pool;
    std::unique_ptr<core::pq::Connection> checker;  // the checker thread's own session
    std::atomic<NodeState> state{NodeState::Down};  // usable only once the checker has seen it
    std::atomic<std::int64_t> lag_us{0};
    std::atomic<std::int64_t> checked_at_ns{0};  // steady clock: the checker's last answer from it
    std::optional<std::uint64_t> replayed;        // its replay position at that check (checker only)
    std::atomic<std::uint64_t> reads{0}, misses{0}, failures{0};
  };
  struct Sample {
    std::chrono::steady_clock::time_point at;
    std::uint64_t lsn;
  };

  bool on_replica(Replica& r, const Lookup& lookup, bool& found);
  bool on_primary(const Lookup& lookup);
  std::optional<std::uint64_t> primary_lsn();
  void check_replica(Replica& r, const std::optional<std::uint64_t>& primary);
  std::chrono::microseconds lag_behind(std::uint64_t replayed) const;
  void run();

  core::pq::Pool& m_primary;
  std::string m_primary_conninfo;
  ReplicaSettings m_settings;
  std::vector<std::unique_ptr<Replica>> m_replicas;
  std::atomic<std::size_t> m_next{0};
  std::atomic<std::uint64_t> m_primary_reads{0};
  std::unique_ptr<core::pq::Connection> m_primary_checker;
  void prune_samples();
  std::deque<Sample> m_samples;  // the primary's WAL positions, each when first seen (checker only)
  std::mutex m_check_mutex;      // one check() at a time (the thread, or a test)
  std::mutex m_stop_mutex;
  std::condition_variable m_stop_cv;
  bool m_stop = false;
  std::thread m_thread;
};

}  // namespace keyline::backupdb
