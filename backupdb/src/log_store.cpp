#include "log_store.h"

#include <botan/hash.h>

#include "keyline/core/error.h"

namespace keyline::backupdb {
namespace {

constexpr auto kLatestMaxAge = std::chrono::milliseconds(200);

LogCheckpoint checkpoint_row(const core::pq::Result& r) {
  LogCheckpoint cp;
  cp.size = static_cast<std::uint64_t>(r.int64(0, 0));
  const auto root = core::merkle::to_hash(r.bytea(0, 1));
  if (!root) throw core::DbError(core::ErrorCode::Db, "log_checkpoints: a root that is not 32 bytes");
  cp.root = *root;
  cp.note = r.text(0, 2);
  cp.signed_at = r.int64(0, 3);
  return cp;
}

// The note with every stored cosignature line appended (0004_log_cosignatures.sql): extra signature
// lines after the log's (C2SP signed-note), in a fixed order so one size always reads the same.
constexpr const char* kCheckpointColumns =
    "SELECT tree_size, root, note || coalesce((SELECT string_agg(c.line, '' ORDER BY c.line) FROM log_cosignatures c "
    "WHERE c.tree_size = log_checkpoints.tree_size), ''), floor(extract(epoch FROM signed_at))::bigint FROM log_checkpoints ";

}  // namespace

namespace log_sql {

std::optional<LogCheckpoint> latest_checkpoint(core::pq::Connection& conn) {
  const auto r = conn.exec_prepared(std::string(kCheckpointColumns) + "ORDER BY tree_size DESC LIMIT 1");
  if (r.empty()) return std::nullopt;
  return checkpoint_row(r);
}

std::optional<LogCheckpoint> checkpoint_of_size(core::pq::Connection& conn, std::uint64_t size) {
  const auto r = conn.exec_prepared(std::string(kCheckpointColumns) + "WHERE tree_size = $1",
                                    {static_cast<std::int64_t>(size)});
  if (r.empty()) return std::nullopt;
  return checkpoint_row(r);
}

std::optional<core::Bytes> tile(core::pq::Connection& conn, const std::string& path) {
  const auto r = conn.exec_prepared("SELECT data FROM log_tiles WHERE path = $1", {path});
  if (r.empty()) return std::nullopt;
  return r.bytea(0, 0);
}

std::vector<LogEntry> entries_from(core::pq::Connection& conn, std::uint64_t from, std::size_t limit) {
  const auto r = conn.exec_prepared(
      "SELECT leaf_index, entry FROM log_entries WHERE leaf_index >= $1 ORDER BY leaf_index LIMIT $2",
      {static_cast<std::int64_t>(from), static_cast<std::int64_t>(limit)});
  std::vector<LogEntry> out;
  out.reserve(static_cast<std::size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i) out.push_back({static_cast<std::uint64_t>(r.int64(i, 0)), r.bytea(i, 1)});
  return out;
}


}  // namespace log_sql

LogReader::LogReader(const std::string& conninfo, std::size_t pool_size, std::size_t cached_tiles,
                     ReadPool* replicas)
    : m_pool(conninfo, pool_size), m_replicas(replicas), m_cached_tiles(cached_tiles) {}

template <typename F>
auto LogReader::with_session(F&& f) {
  auto lease = m_pool.acquire();
  try {
    return f(*lease);
  } catch (const core::DbError& e) {
    // Reads are idempotent: one retry on a fresh session covers a restarted server (as Store::load).
    if (e.code() != core::ErrorCode::DbConnection) throw;
    lease->reconnect();
    return f(*lease);
  }
}

std::optional<LogCheckpoint> LogReader::latest() {
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> g(m_latest_mutex);
    if (m_latest && now - m_latest_read < kLatestMaxAge) return m_latest;
  }
  auto cp = with_session([](core::pq::Connection& c) { return log_sql::latest_checkpoint(c); });
  std::lock_guard<std::mutex> g(m_latest_mutex);
  if (cp && (!m_latest || cp->size >= m_latest->size)) m_latest = cp;
  m_latest_read = now;
  return m_latest;
}

void LogReader::published(const LogCheckpoint& cp) {
  std::lock_guard<std::mutex> g(m_latest_mutex);
  if (!m_latest || cp.size >= m_latest->size) m_latest = cp;
  m_latest_read = std::chrono::steady_clock::now();
}

std::optional<LogCheckpoint> LogReader::checkpoint(std::uint64_t size) {
  {
    std::lock_guard<std::mutex> g(m_latest_mutex);
    if (m_latest && m_latest->size == size) return m_latest;
  }
  return with_session([size](core::pq::Connection& c) { return log_sql::checkpoint_of_size(c, size); });
}

std::shared_ptr<const StoredTile> LogReader::tile(const std::string& path) {
  {
    std::lock_guard<std::mutex> g(m_tiles_mutex);
    const auto it = m_tiles.find(path);
    if (it != m_tiles.end()) return it->second;
  }
  std::optional<core::Bytes> data;
  const auto lookup = [&path, &data](core::pq::Connection& c) { return (data = log_sql::tile(c, path)).has_value(); };
  if (m_replicas) {
    m_replicas->read(lookup);
  } else {
    with_session(lookup);
  }
  if (!data) return nullptr;
  auto stored = std::make_shared<StoredTile>();
  const auto digest = Botan::HashFunction::create_or_throw("SHA-256")->process(*data);
  stored->etag = "\"" + core::to_hex(digest.data(), digest.size()) + "\"";
  stored->data = std::move(*data);
  std::shared_ptr<const StoredTile> shared = std::move(stored);
  std::lock_guard<std::mutex> g(m_tiles_mutex);
  if (m_cached_tiles == 0 || !m_tiles.emplace(path, shared).second) return shared;
  m_tile_order.push_back(path);
  if (m_tile_order.size() > m_cached_tiles) {
    m_tiles.erase(m_tile_order.front());
    m_tile_order.pop_front();
  }
  return shared;
}

core::tlog::TileReader LogReader::tile_reader() {
  return [this](const core::tlog::TileId& id) {
    const auto path = core::tlog::tile_path(id);
    const auto t = tile(path);
    if (!t) throw core::FormatError(core::ErrorCode::BadTile, path + " is not stored");
    return t->data;
  };
}


}  // namespace keyline::backupdb
