// The record store: PostgreSQL through a connection pool, with an LRU cache in front of reads.
// Records are immutable (invariant 5), so a cached record is never stale.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "keyline/backupdb/read_pool.h"
#include "keyline/core/bytes.h"
#include "keyline/core/pq.h"
#include "keyline/core/pq_group.h"
#include "keyline/core/record.h"

namespace keyline::backupdb {

struct StoredRecord {
  std::string chip_id;
  std::string imei;
  std::string record_hash;
  std::string json;  // the GET body: made once at publish time, with "leaf_index" added when read
  core::Bytes backup;
  core::Bytes identity_der;
  std::int64_t leaf_index = -1;  // its transparency log index (-1: none, a row inserted around the server)
};
using RecordPtr = std::shared_ptr<const StoredRecord>;

enum class PublishOutcome { Created, Identical, Conflict };
struct PublishResult {
  PublishOutcome outcome = PublishOutcome::Created;
  std::string existing_hash;  // on Conflict: the hash of the record already published
  std::string conflict_on;    // on Conflict: "chip_id" or "imei"
  // The log index of the record now published (Created, Identical) or of the one in the way
  // (Conflict); -1 when there is none (a conflict whose row could not be read).
  std::int64_t leaf_index = -1;
};


class ReadBatcher;  // backupdb/src/read_batch.h
class PartitionMap;  // backupdb/src/pg_partition_hash.h
struct RecordRoutes;

class Store {
 public:
  // `conninfo` is the primary, which takes every write; reads go through `replicas` (read_pool.h)
  // when there are any, each with a pool of `pool_size` sessions as the primary's.
  Store(const std::string& conninfo, std::size_t pool_size, std::size_t cache_entries,
        const ReplicaSettings& replicas = {}, std::size_t read_batch = kDefaultReadBatch);
  ~Store();

  // Cache misses that reach the database while every session is out share one round trip, up to
  // this many lookups (serve --read-batch). Off by default: it bought 15-27 % of req/s and cost twice
  // the p99 (docs/scale.md, "Cold reads").
  static constexpr std::size_t kDefaultReadBatch = 1;

  RecordPtr by_chip_id(const std::string& chip_id);  // nullptr when absent
  RecordPtr by_imei(const std::string& imei);
  // Inserts unless a record with the same chip ID or IMEI exists (one atomic INSERT); the first
  // writer wins, later ones learn whether their content was identical. `hash` is record.hash(),
  // which the caller has already computed. The same statement gives the record its transparency
  // log index (backupdb/migrations/0003_log.sql: dense, in commit order).
  PublishResult publish(const core::Record& record, const std::string& hash);
  bool healthy();  // SELECT 1 round trip
  // Fills the cache with up to `max` records, newest first, streamed through a cursor. Returns the
  // number loaded. Worth it when the records fit in memory: reads then never wait on PostgreSQL.
  std::size_t preload(std::size_t max);
  std::size_t cache_hits() const { return m_hits; }
  std::size_t cache_misses() const { return m_misses; }
  ReadPool& reads() { return m_reads; }  // also the log's tile reads (log_store.h)
  // A chip ID lookup names its partition of records itself (pg_partition_hash.h), from the layout
  // the first lookup reads from the catalog and a lookup re-reads every kLayoutRereadAfter. A chip ID
  // the named partition does not have is asked of the parent table too only while the map is younger
  // than kYoungMap, for one miss in kFallbackSample after that, and always when the chip ID came from
  // record_imei (it exists). Records such a check found: a wrong partition map, so it stays 0; the
  // first one switches routing off (every lookup through the parent) for the rest of the process.
  static constexpr std::size_t kFallbackSample = 256;
  static constexpr std::chrono::seconds kYoungMap{5};
  static constexpr std::chrono::seconds kLayoutRereadAfter{30};
  std::uint64_t partition_fallback_hits() const { return m_fallback_hits; }
  std::size_t partitions_routed() const { return m_routed; }  // 0: lookups go through the parent
  bool partition_routing_off() const { return m_routing_off; }  // a check found a misrouted record
  std::string render_metrics() const;
  // Replaces the partition map as if read from the catalog `age` ago (tests: a wrong one must cost
  // time, never more than kFallbackSample answers; past kLayoutRereadAfter the next lookup re-reads
  // the catalog), and switches routing on again.
  void set_partition_map(const PartitionMap& map, std::chrono::seconds age = std::chrono::seconds(0));

 private:
  RecordPtr cache_get(const std::string& chip_id);
  void cache_put(const RecordPtr& r);
  RecordPtr load(const std::string& column, const std::string& value);
  std::unordered_map<std::string, RecordPtr> fetch(const std::string& column, const std::vector<std::string>& keys);
  std::unordered_map<std::string, RecordPtr> lookup(core::pq::Connection& c, bool by_chip,
                                                    const std::vector<std::string>& keys);
  // `exist`: every chip ID is known to have a record (read from record_imei), so each miss is checked.
  std::unordered_map<std::string, RecordPtr> lookup_chips(core::pq::Connection& c, const RecordRoutes& routes,
                                                          const std::vector<std::string>& chips, bool exist);
  std::shared_ptr<const RecordRoutes> routes(core::pq::Connection& c);
  bool layout_due() const;
  void misrouted(const StoredRecord& rec, const std::string& named);

  // The cache is split into shards with a lock each, so 64 reader threads on 2 cores rarely wait on
  // one another (a preempted lock holder would otherwise stall every reader: the p99 tail).
  static constexpr std::size_t kShards = 32;
  struct Shard {
    std::mutex mutex;
    std::list<RecordPtr> lru;  // front = most recent
    std::unordered_map<std::string, std::list<RecordPtr>::iterator> index;
  };
  Shard& shard_of(const std::string& chip_id) { return m_shards[std::hash<std::string>{}(chip_id) % kShards]; }

  core::pq::Pool m_pool;  // the primary
  ReadPool m_reads;       // record lookups: replicas, then m_pool
  core::pq::GroupCommit m_group;  // record inserts of concurrent requests, committed together
  std::size_t m_shard_capacity;
  std::array<Shard, kShards> m_shards;
  std::atomic<std::size_t> m_hits{0};
  std::atomic<std::size_t> m_misses{0};
  std::unique_ptr<ReadBatcher> m_chip_reads;  // null with read_batch 1
  std::unique_ptr<ReadBatcher> m_imei_reads;
  std::shared_ptr<const RecordRoutes> m_routes;  // std::atomic_load/store; null until the first lookup
  std::mutex m_routes_mutex;                      // one catalog read at a time
  std::atomic<std::size_t> m_routed{0};
  std::atomic<std::uint64_t> m_fallback_hits{0};
  std::atomic<bool> m_fallback_logged{false};
  std::atomic<bool> m_routing_off{false};          // set by the first misrouted record found
  std::atomic<std::uint64_t> m_chip_misses{0};     // named-partition misses: picks the sampled ones
  std::atomic<std::int64_t> m_layout_read_at{0};   // steady_clock ticks of the last catalog read
};

}  // namespace keyline::backupdb
