// The transparency log's tables (backupdb/migrations/0003_log.sql) as the integrator and the read
// API use them: entries by index, tiles by path, checkpoints by size. docs/transparency.md, "The
// public DB's log".
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "keyline/backupdb/read_pool.h"
#include "keyline/core/merkle.h"
#include "keyline/core/pq.h"
#include "keyline/core/tlog_tiles.h"

namespace keyline::backupdb {

struct LogCheckpoint {
  std::uint64_t size = 0;
  core::merkle::Hash root{};
  std::string note;           // the signed note text served at /v1/log/checkpoint
  std::int64_t signed_at = 0;  // Unix seconds
};

struct StoredTile {
  core::Bytes data;
  std::string etag;  // strong (RFC 9110 section 8.8.3): the SHA-256 of the bytes, hex, quoted
};

struct LogEntry {
  std::uint64_t leaf_index = 0;
  core::Bytes entry;  // core/record_leaf.h
};

// Statements on a session the caller holds (the integrator keeps its own, the one with the lock).
namespace log_sql {
std::optional<LogCheckpoint> latest_checkpoint(core::pq::Connection& conn);
std::optional<LogCheckpoint> checkpoint_of_size(core::pq::Connection& conn, std::uint64_t size);
std::optional<core::Bytes> tile(core::pq::Connection& conn, const std::string& path);
// Entries with leaf_index >= from, in index order, at most `limit`.
std::vector<LogEntry> entries_from(core::pq::Connection& conn, std::uint64_t from, std::size_t limit);
}  // namespace log_sql

// What the public listener reads, on a pool of its own: tiles through a bounded cache (a tile path
// always names the same bytes, so a cached tile is never stale) and the latest checkpoint, taken
// from the in-process integrator when there is one and otherwise re-read at most every 200 ms.
class LogReader {
 public:
  // Checkpoints are read on the primary (`conninfo`); tiles, when `replicas` is given, through it:
  // a tile a replica has is the primary's (a path names its bytes), one it lacks yet is read on the
  // primary, so every tile of the primary's latest checkpoint is found.
  LogReader(const std::string& conninfo, std::size_t pool_size, std::size_t cached_tiles,
            ReadPool* replicas = nullptr);

  std::optional<LogCheckpoint> latest();
  void published(const LogCheckpoint& cp);  // the in-process integrator's newest checkpoint
  std::optional<LogCheckpoint> checkpoint(std::uint64_t size);
  std::shared_ptr<const StoredTile> tile(const std::string& path);  // nullptr when not stored
  // For core::tlog::TileHashSource: throws FormatError(BadTile) for a tile that is not stored.
  core::tlog::TileReader tile_reader();

 private:
  template <typename F>
  auto with_session(F&& f);

  core::pq::Pool m_pool;
  ReadPool* m_replicas;
  std::size_t m_cached_tiles;
  std::mutex m_tiles_mutex;
  std::unordered_map<std::string, std::shared_ptr<const StoredTile>> m_tiles;
  std::deque<std::string> m_tile_order;  // oldest first, for eviction
  std::mutex m_latest_mutex;
  std::optional<LogCheckpoint> m_latest;
  std::chrono::steady_clock::time_point m_latest_read{};
};

}  // namespace keyline::backupdb
