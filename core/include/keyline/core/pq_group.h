// Group commit: one-statement units of work from many threads (a line's journal steps, the public
// DB's record inserts) that reach the database at about the same time share one transaction (one
// round trip, one WAL flush) instead of paying one each.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>

#include "keyline/core/pq.h"

namespace keyline::core::pq {

class GroupCommit {
 public:
  // At most `flushers` batches are in flight at once, each of at most `max_batch` statements, on
  // sessions leased from `pool`. While they are out, newly arriving statements queue up: that queue
  // is the next batch, so batches grow with the load and a lone statement never waits for company.
  GroupCommit(Pool& pool, std::size_t flushers, std::size_t max_batch);

  // Runs `sql` (prepared, as Connection::exec_prepared) and returns once it has committed, with the
  // same result or DbError as on a session of its own. When a statement of a batch fails, the batch
  // rolls back and each of its statements runs again alone, so one device's error is never another's.
  // A lost connection fails the whole batch with DbConnection (the outcome of the commit is unknown,
  // exactly as for a single statement whose answer was lost).
  Result exec(const std::string& sql, Params params);

  struct Stats {
    std::uint64_t statements = 0;
    std::uint64_t batches = 0;
  };
  Stats stats() const;

 private:
  struct Pending;
  void flush(std::deque<Pending*>& batch);

  Pool& m_pool;
  const std::size_t m_flushers;
  const std::size_t m_max_batch;
  mutable std::mutex m_mutex;
  std::deque<Pending*> m_queue;
  std::size_t m_active = 0;
  Stats m_stats;
};

}  // namespace keyline::core::pq
