// Batched point lookups: record reads that miss the cache at about the same time become one
// statement (WHERE chip_id = ANY($1)) instead of one round trip each. What a lookup costs the
// database is mostly the statement around it (bind, executor start and end, the result, two process
// wake-ups), not the index probe, so a batch of n costs little more than one lookup
// (docs/scale.md, "Cold reads", has the figures). The same leader/follower shape as
// core::pq::GroupCommit: a lone lookup never waits for company.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "keyline/backupdb/store.h"

namespace keyline::backupdb {

class ReadBatcher {
 public:
  // Fetches the records for `keys` (distinct): the ones found, keyed as asked. Runs on the caller's
  // thread; a throw fails every lookup of the batch with that error.
  using Fetch = std::function<std::unordered_map<std::string, RecordPtr>(const std::vector<std::string>& keys)>;

  // At most `flushers` batches in flight, each of at most `max_batch` keys.
  ReadBatcher(std::size_t flushers, std::size_t max_batch, Fetch fetch);

  // The record under `key`, nullptr when absent; the fetch's error otherwise.
  RecordPtr get(const std::string& key);

  struct Stats {
    std::uint64_t lookups = 0;
    std::uint64_t batches = 0;
  };
  Stats stats() const;

 private:
  struct Pending;
  void flush(std::deque<Pending*>& batch);

  const std::size_t m_flushers;
  const std::size_t m_max_batch;
  Fetch m_fetch;
  mutable std::mutex m_mutex;
  std::deque<Pending*> m_queue;
  std::size_t m_active = 0;
  Stats m_stats;
};

// "{A,B}": a PostgreSQL array literal of keys the caller has validated (hex digits, decimal digits:
// nothing to quote). Sent as a parameter, never spliced into SQL.
std::string array_literal(const std::vector<std::string>& keys);

}  // namespace keyline::backupdb
