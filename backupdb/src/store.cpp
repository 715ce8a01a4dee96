#include "keyline/backupdb/store.h"

#include <algorithm>
#include <ctime>
#include <sstream>

#include "keyline/core/json_log.h"
#include "keyline/core/record_leaf.h"
#include "pg_partition_hash.h"
#include "read_batch.h"

namespace keyline::backupdb {
namespace {

std::string utc_now_iso() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Group commit of record inserts: two batches in flight (one executing while the other waits for
// its WAL flush), at most 32 records each.
constexpr std::size_t kInsertFlushers = 2;
constexpr std::size_t kInsertBatch = 32;

// After an INSERT that found its keys taken: the same record (Identical) or another (Conflict).
PublishResult existing_outcome(core::pq::Connection& conn, const std::string& chip, const std::string& imei,
                               const std::string& hash) {
  PublishResult result;
  // A fixed text whose plan cannot depend on the values (a lookup by the two unique keys): prepared
  // once per session.
  const auto existing = conn.exec_prepared(
      "SELECT r.chip_id, r.imei, r.record_hash, e.leaf_index FROM records r LEFT JOIN log_entries e ON e.record_seq = r.seq "
      "WHERE r.chip_id = $1 OR r.imei = $2 ORDER BY r.seq",
      {chip, imei});
  const auto index_of = [&existing](int row) { return existing.is_null(row, 3) ? -1 : existing.int64(row, 3); };
  for (int i = 0; i < existing.rows(); ++i) {
    if (existing.text(i, 2) == hash && existing.text(i, 0) == chip && existing.text(i, 1) == imei) {
      result.outcome = PublishOutcome::Identical;
      result.leaf_index = index_of(i);
      return result;
    }
  }
  result.outcome = PublishOutcome::Conflict;
  if (existing.rows() > 0) {
    result.existing_hash = existing.text(0, 2);
    result.conflict_on = existing.text(0, 0) == chip ? "chip_id" : "imei";
    result.leaf_index = index_of(0);
  }
  return result;
}

// The GET body gains the record's log index: the index is drawn by the publish statement itself, so
// the body stored before it (body_json) cannot hold it. Added here, as the last member.
std::string with_leaf_index(std::string json, const core::pq::Result& r, int row, int col) {
  if (r.is_null(row, col) || json.empty() || json.back() != '}') return json;
  json.insert(json.size() - 1, ",\"leaf_index\":" + std::to_string(r.int64(row, col)));
  return json;
}

std::shared_ptr<StoredRecord> stored_record(const core::pq::Result& r, int i) {
  auto rec = std::make_shared<StoredRecord>();
  rec->chip_id = r.text(i, 0);
  rec->imei = r.text(i, 1);
  rec->record_hash = r.text(i, 2);
  rec->json = with_leaf_index(r.text(i, 3), r, i, 6);
  rec->backup = r.bytea(i, 4);
  rec->identity_der = r.bytea(i, 5);
  rec->leaf_index = r.is_null(i, 6) ? -1 : r.int64(i, 6);
  return rec;
}

constexpr const char* kRecordColumns =
    "SELECT r.chip_id, r.imei, r.record_hash, r.body_json, r.backup, r.identity_der, e.leaf_index "
    "FROM records r LEFT JOIN log_entries e ON e.record_seq = r.seq ";

// The lookup by chip ID in `table` (records or one of its partitions, a name from the catalog).
std::string by_chip_in(const std::string& table) {
  return "SELECT r.chip_id, r.imei, r.record_hash, r.body_json, r.backup, r.identity_der, e.leaf_index "
         "FROM " + table + " r LEFT JOIN log_entries e ON e.record_seq = r.seq "
         "WHERE r.chip_id = $1";
}

}  // namespace

// The chip ID lookups the server routes itself: one statement text for each partition, by remainder,
// each a lookup on one table (prepared once per session, as every lookup). With an empty map, none:
// the layout is not the one the hash computes, and every lookup goes through the parent as before.
struct RecordRoutes {
  PartitionMap map;
  std::chrono::steady_clock::time_point loaded_at;  // when this map was first read (young: checked)
  std::vector<std::string> by_chip;
  std::string by_chip_parent = by_chip_in("records");

  RecordRoutes(PartitionMap m, std::chrono::steady_clock::time_point at) : map(std::move(m)), loaded_at(at) {
    for (const auto& name : map.names()) by_chip.push_back(by_chip_in(name));
  }
  const std::string& by_chip_sql(const std::string& chip, bool routed) const {
    return routed ? by_chip[map.remainder_of(chip)] : by_chip_parent;
  }
};

namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

Store::Store(const std::string& conninfo, std::size_t pool_size, std::size_t cache_entries,
             const ReplicaSettings& replicas, std::size_t read_batch)
    : m_pool(conninfo, pool_size),
      m_reads(m_pool, conninfo, replicas, pool_size),
      m_group(m_pool, kInsertFlushers, kInsertBatch),
      m_shard_capacity(cache_entries == 0 ? 0 : (cache_entries + kShards - 1) / kShards) {
  if (read_batch <= 1) return;
  // As many batches in flight as sessions: a lookup waits for company only when every session is
  // out, so batching never takes parallelism away (with fewer flushers than sessions it measured
  // slower on 2 cores); while all are out the next batch gathers instead of lookups queueing.
  const std::size_t flushers = std::max<std::size_t>(1, pool_size);
  m_chip_reads = std::make_unique<ReadBatcher>(flushers, read_batch, [this](const std::vector<std::string>& keys) {
    return fetch("chip_id", keys);
  });
  m_imei_reads = std::make_unique<ReadBatcher>(flushers, read_batch, [this](const std::vector<std::string>& keys) {
    return fetch("imei", keys);
  });
}

Store::~Store() = default;

RecordPtr Store::cache_get(const std::string& chip_id) {
  Shard& sh = shard_of(chip_id);
  std::lock_guard<std::mutex> g(sh.mutex);
  const auto it = sh.index.find(chip_id);
  if (it == sh.index.end()) {
    ++m_misses;
    return nullptr;
  }
  ++m_hits;
  sh.lru.splice(sh.lru.begin(), sh.lru, it->second);
  return *it->second;
}

void Store::cache_put(const RecordPtr& r) {
  if (m_shard_capacity == 0) return;
  Shard& sh = shard_of(r->chip_id);
  std::lock_guard<std::mutex> g(sh.mutex);
  if (sh.index.count(r->chip_id)) return;
  sh.lru.push_front(r);
  sh.index[r->chip_id] = sh.lru.begin();
  if (sh.lru.size() > m_shard_capacity) {
    sh.index.erase(sh.lru.back()->chip_id);
    sh.lru.pop_back();
  }
}

RecordPtr Store::load(const std::string& column, const std::string& value) {
  const auto found = fetch(column, {value});
  return found.empty() ? nullptr : found.begin()->second;
}

// The layout is read by the first lookup, on that lookup's session: the pool opens sessions lazily,
// so a server started before its database still starts. A replica has the primary's catalog. It is
// read again by the first lookup after kLayoutRereadAfter (a few catalog statements on one request
// every 30 s, while the others go on with the map they have), so a table re-partitioned under a
// running server is routed by its new layout without waiting for a sampled miss to notice.
bool Store::layout_due() const {
  return Clock::now().time_since_epoch().count() - m_layout_read_at >=
         std::chrono::duration_cast<Clock::duration>(kLayoutRereadAfter).count();
}

std::shared_ptr<const RecordRoutes> Store::routes(core::pq::Connection& c) {
  auto r = std::atomic_load(&m_routes);
  if (r && !layout_due()) return r;
  std::unique_lock<std::mutex> g(m_routes_mutex, std::defer_lock);
  if (!r)
    g.lock();
  else if (!g.try_lock())
    return r;  // another lookup is re-reading it
  r = std::atomic_load(&m_routes);
  if (r && !layout_due()) return r;
  const auto now = Clock::now();
  PartitionLayout layout;
  try {
    layout = read_partition_layout(c, "records", "chip_id");
  } catch (const core::DbError& e) {
    if (!r) throw;  // the first read: the lookup fails as any lookup on a failing session
    // A re-read: the map in use stays (the session's own failure is the lookup's to meet).
    core::log::warn("records_partitions_reread_failed", core::log::Fields().str("error", e.what()));
    m_layout_read_at = now.time_since_epoch().count();
    return r;
  }
  m_layout_read_at = now.time_since_epoch().count();
  // Unchanged: the map in use stays, and with it its age (a re-read does not make it young again,
  // which would check every miss for kYoungMap of every kLayoutRereadAfter).
  if (r && r->map.names() == layout.map.names()) return r;
  if (layout.map.empty())
    core::log::info("records_partitions_not_routed", core::log::Fields().str("reason", layout.reason));
  else
    core::log::info("records_partitions_routed",
                    core::log::Fields()
                        .num("partitions", static_cast<std::int64_t>(layout.map.modulus()))
                        .str("read", r ? "again, changed" : "first"));
  auto routes = std::make_shared<const RecordRoutes>(std::move(layout.map), now);
  if (!m_routing_off) m_routed = routes->map.modulus();
  std::atomic_store(&m_routes, routes);
  return routes;
}

void Store::set_partition_map(const PartitionMap& map, std::chrono::seconds age) {
  std::lock_guard<std::mutex> g(m_routes_mutex);
  const auto at = Clock::now() - age;
  auto r = std::make_shared<const RecordRoutes>(map, at);
  m_routing_off = false;
  m_routed = r->map.modulus();
  m_layout_read_at = at.time_since_epoch().count();
  std::atomic_store(&m_routes, r);
}

// A record the named partition did not have and the parent table did: the map is wrong (a wrong hash,
// or a layout changed since it was read), so no later lookup trusts it: routing goes off for the rest
// of the process (a restart reads and verifies the layout again), every lookup through the parent.
void Store::misrouted(const StoredRecord& rec, const std::string& named) {
  ++m_fallback_hits;
  m_routing_off = true;
  m_routed = 0;
  if (m_fallback_logged.exchange(true)) return;  // once: the metric counts the rest
  core::log::get().device(core::log::Level::Warn, "records_partition_misrouted", rec.chip_id, rec.imei,
                          core::log::Fields().str("named", named).str("found_in", "records").str("routing", "off"));
}

namespace {

// One statement alone needs no pipeline (entering and leaving it is two more library calls).
std::vector<core::pq::Result> run_batch(core::pq::Connection& c,
                                        const std::vector<core::pq::Statement>& statements) {
  if (statements.size() == 1) {
    std::vector<core::pq::Result> one;
    one.push_back(c.exec_prepared(statements[0].sql, statements[0].params));
    return one;
  }
  std::vector<const core::pq::Statement*> batch;
  batch.reserve(statements.size());
  for (const auto& st : statements) batch.push_back(&st);
  return c.exec_pipeline(batch);
}

}  // namespace

// Chip ID lookups on one session: a batch is one pipeline (one round trip, one Sync, PostgreSQL 15
// manual 34.5) of single lookups, each in the partition the server names (docs/scale.md, "What the
// partitions cost a lookup"). One statement over all the keys cannot do as well: with the keys an
// array parameter, `chip_id = ANY($1)` or a nested loop over unnest($1) leave all sixteen partitions
// and their indexes to be opened and locked on every execution (docs/scale.md, "Cold reads").
std::unordered_map<std::string, RecordPtr> Store::lookup_chips(core::pq::Connection& c,
                                                               const RecordRoutes& routes,
                                                               const std::vector<std::string>& chips,
                                                               bool exist) {
  const bool routed = !routes.map.empty() && !m_routing_off;
  std::unordered_map<std::string, RecordPtr> found;
  std::vector<core::pq::Statement> statements;
  statements.reserve(chips.size());
  for (const auto& k : chips) statements.push_back({routes.by_chip_sql(k, routed), {k}});
  for (const auto& r : run_batch(c, statements))
    for (int i = 0; i < r.rows(); ++i) {
      auto rec = stored_record(r, i);
      found.emplace(rec->chip_id, rec);
    }
  if (!routed || found.size() == chips.size()) return found;
  // A miss in the named partition is asked again of the parent table, which PostgreSQL routes
  // itself, only where that can find something the map lost: the map was verified when read (the
  // probe keys, read_partition_layout), so a miss is nearly always a chip ID never published (a 404),
  // and checking each one would double what a 404 costs on each node it is asked of (docs/scale.md,
  // "What the partitions cost a lookup"). Checked: every miss while the map is young (a layout just
  // read or changed), every miss of a chip ID record_imei named (it exists), and one miss in
  // kFallbackSample: 256 keeps a 404's cost within half a percent of one statement while a wrong map,
  // which loses nearly every lookup, is still caught within 256 misses of its first lookup. A record
  // found this way switches routing off (misrouted); until then a wrong map's misses are 404s.
  const bool young = Clock::now() - routes.loaded_at < kYoungMap;
  statements.clear();
  for (const auto& k : chips) {
    if (found.count(k)) continue;
    if (exist || young || m_chip_misses.fetch_add(1) % kFallbackSample == 0)
      statements.push_back({routes.by_chip_parent, {k}});
  }
  if (statements.empty()) return found;
  for (const auto& r : run_batch(c, statements))
    for (int i = 0; i < r.rows(); ++i) {
      auto rec = stored_record(r, i);
      misrouted(*rec, routes.map.partition_of(rec->chip_id));
      found.emplace(rec->chip_id, rec);
    }
  return found;
}

// An IMEI is not the partition key: its lookup is one probe of record_imei's unique index (an
// ordinary table, 0005), then the lookup of the chip ID found in the partition named for it. With
// the records not routed (not the 0005 layout), one statement through the parent as before.
constexpr const char* kImeiChips = "SELECT chip_id FROM record_imei WHERE imei = ANY($1::text[])";
constexpr const char* kBatchByImei =
    "SELECT r.chip_id, r.imei, r.record_hash, r.body_json, r.backup, r.identity_der, e.leaf_index "
    "FROM unnest($1::text[]) k(key) JOIN record_imei i ON i.imei = k.key "
    "JOIN LATERAL (SELECT * FROM records WHERE chip_id = i.chip_id) r ON true "
    "LEFT JOIN log_entries e ON e.record_seq = r.seq";

std::unordered_map<std::string, RecordPtr> Store::lookup(core::pq::Connection& c, bool by_chip,
                                                         const std::vector<std::string>& keys) {
  const auto r = routes(c);
  if (by_chip) return lookup_chips(c, *r, keys, false);
  std::unordered_map<std::string, RecordPtr> found;
  if (r->map.empty()) {
    const auto res = keys.size() == 1
                         ? c.exec_prepared(std::string(kRecordColumns) + "WHERE r.imei = $1", {keys[0]})
                         : c.exec_prepared(kBatchByImei, {array_literal(keys)});
    for (int i = 0; i < res.rows(); ++i) {
      auto rec = stored_record(res, i);
      found.emplace(rec->imei, rec);
    }
    return found;
  }
  const auto chips_of = c.exec_prepared(kImeiChips, {array_literal(keys)});
  if (chips_of.empty()) return found;
  std::vector<std::string> chips;
  for (int i = 0; i < chips_of.rows(); ++i) chips.push_back(chips_of.text(i, 0));
  for (auto& [chip, rec] : lookup_chips(c, *r, chips, true)) found.emplace(rec->imei, rec);
  return found;
}

std::unordered_map<std::string, RecordPtr> Store::fetch(const std::string& column,
                                                        const std::vector<std::string>& keys) {
  const bool by_chip = column == "chip_id";
  std::unordered_map<std::string, RecordPtr> found;
  std::vector<std::string> pending = keys;
  // m_reads picks the session (a replica, else the primary) and retries a lost one.
  m_reads.read([&](core::pq::Connection& c) {
    auto got = lookup(c, by_chip, pending);  // throws before anything is kept: the retry asks the same keys
    found.merge(got);
    // Not all found: the read pool asks the primary for the keys still missing (a replica's "absent"
    // is not trusted); the ones the replica had are not read twice.
    std::vector<std::string> missing;
    for (const auto& k : pending)
      if (!found.count(k)) missing.push_back(k);
    pending.swap(missing);
    return pending.empty();
  });
  for (const auto& f : found) cache_put(f.second);
  return found;
}

std::string Store::render_metrics() const {
  std::ostringstream o;
  o << "# HELP keyline_backupdb_records_partitions_routed Partitions of records a chip ID lookup names "
       "itself (0: it goes through the parent table, or no lookup has read the layout yet).\n"
       "# TYPE keyline_backupdb_records_partitions_routed gauge\n"
       "keyline_backupdb_records_partitions_routed "
    << m_routed << "\n"
    << "# HELP keyline_backupdb_partition_fallback_hits_total Records the named partition did not have "
       "and the parent table did: a wrong partition map (stays 0).\n"
       "# TYPE keyline_backupdb_partition_fallback_hits_total counter\n"
       "keyline_backupdb_partition_fallback_hits_total "
    << m_fallback_hits << "\n";
  return o.str();
}

RecordPtr Store::by_chip_id(const std::string& chip_id) {
  if (auto r = cache_get(chip_id)) return r;
  return m_chip_reads ? m_chip_reads->get(chip_id) : load("chip_id", chip_id);
}

RecordPtr Store::by_imei(const std::string& imei) { return m_imei_reads ? m_imei_reads->get(imei) : load("imei", imei); }

PublishResult Store::publish(const core::Record& record, const std::string& hash) {
  const std::string chip = record.chip_id.str();
  const std::string imei = record.imei.str();
  const std::string published_at = utc_now_iso();
  const std::string json = record.to_json_hashed(hash, published_at);
  const core::Bytes identity = record.certificates.empty() ? core::Bytes{} : record.certificates.front();
  const core::Bytes entry = core::encode_record_leaf(record.chip_id, record.imei, hash);
  // One statement, no BEGIN/COMMIT around it: a single INSERT is atomic by itself, and the unique
  // constraints on chip_id and imei make the first writer win. It goes through the group commit, so
  // inserts arriving together share a transaction: when one of them fails, the batch rolls back and
  // each runs again alone, which leaves exactly the single-statement semantics described here.
  // ON CONFLICT DO NOTHING waits for a concurrent inserter of the same key to finish and then skips,
  // so when no row comes back a conflicting row is committed; the SELECT after it, a new statement
  // with a new snapshot (READ COMMITTED), sees it. Rows are never changed or removed, so nothing can
  // happen between the two statements that a transaction would have prevented.
  // Safe to re-run after a lost connection: if the first attempt committed but its answer was lost,
  // the retry finds the identical row and reports Identical (200), never a duplicate. The retries
  // (core::pq::retry_transient, as run_transaction's) need no reconnect: the pool reopens a lost session.
  // The log index is drawn in the same statement, and only when the record row was inserted: the
  // counter row's lock is held to the commit, which is what keeps indexes dense and in commit
  // order (0003_log.sql). Two batches that each wait for the other (one on the counter, the other
  // on a chip ID the first inserted) are a deadlock PostgreSQL breaks; the batch is then re-run.
  PublishResult result;
  // With the records partitioned (0005_records_partitioned.sql) a taken IMEI is not skipped by ON
  // CONFLICT: record_imei's key refuses it (23505) and the statement rolls back whole, record row and
  // log index included; the lookup below then names the record in the way, as for a taken chip ID.
  core::pq::retry_transient(core::pq::RetryPolicy{}, [&] {
    core::pq::Result ins;
    try {
      ins = m_group.exec(
            "WITH ins AS (INSERT INTO records (chip_id, imei, record_hash, backup, identity_der, body_json, published_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7::timestamptz) ON CONFLICT DO NOTHING RETURNING seq), "
            "idx AS (UPDATE log_sequence SET next_index = next_index + 1 WHERE EXISTS (SELECT 1 FROM ins) "
            "RETURNING next_index - 1 AS leaf_index) "
            "INSERT INTO log_entries (leaf_index, record_seq, entry) SELECT idx.leaf_index, ins.seq, $8 FROM ins, idx "
            "RETURNING leaf_index",
            {chip, imei, hash, record.backup, identity, json, published_at, entry});
    } catch (const core::DbError& e) {
      if (e.code() != core::ErrorCode::DbUniqueViolation) throw;
    }
    if (ins.rows() == 1) {
      result = PublishResult{};
      result.outcome = PublishOutcome::Created;
      result.leaf_index = ins.int64(0, 0);
      return;
    }
    auto lease = m_pool.acquire();
    result = existing_outcome(*lease, chip, imei, hash);
  });
  return result;
}


std::size_t Store::preload(std::size_t max) {
  auto lease = m_pool.acquire();
  std::size_t loaded = 0;
  core::pq::Transaction tx(*lease, core::pq::Isolation::RepeatableRead);
  tx.exec(
      std::string("DECLARE preload NO SCROLL CURSOR FOR ") + kRecordColumns + "ORDER BY r.seq DESC");
  while (loaded < max) {
    const auto r = tx.exec("FETCH 5000 FROM preload");
    if (r.empty()) break;
    for (int i = 0; i < r.rows() && loaded < max; ++i, ++loaded) cache_put(stored_record(r, i));
  }
  tx.commit();
  return loaded;
}

bool Store::healthy() {
  try {
    auto lease = m_pool.acquire();
    if (!lease->ok()) lease->reconnect();
    return lease->exec("SELECT 1").int64(0, 0) == 1;
  } catch (const core::Error&) {
    return false;
  }
}

}  // namespace keyline::backupdb
