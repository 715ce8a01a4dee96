// The server names the partition of a chip ID lookup itself (backupdb/src/pg_partition_hash.h,
// issue #20): PostgreSQL's own hash of the chip ID, with the layout read from the catalog. Checked
// against where PostgreSQL put 20,000 records (tableoid), through the Store as the server's role, with
// a wrong partition map injected (a sampled miss finds it and routing goes off), the layout re-read,
// and what an absent chip ID costs. On the fixture PostgreSQL cluster, a database per test case.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "keyline/backupdb/migrate.h"
#include "keyline/backupdb/store.h"
#include "keyline/core/migrate.h"
#include "keyline/core/pq.h"
#include "pg_partition_hash.h"
#include "partition_db.h"
#include "testenv.h"

using namespace keyline;

namespace {

constexpr long kRecords = 20000;

using partition_db::kRolePassword;
using partition_db::migrated_db;
using partition_db::role_of;

// Half the chip IDs as the benchmark makes them (sequential hex), half spread over every digit (md5).
void fill(core::pq::Connection& c) {
  c.exec(
      "INSERT INTO records (chip_id, imei, record_hash, backup, identity_der, body_json, published_at) "
      "SELECT CASE WHEN i % 2 = 0 THEN upper(lpad(to_hex(i), 20, '0')) ELSE upper(substr(md5(i::text), 1, "
      "20)) END, "
      "'35' || lpad(i::text, 13, '0'), upper(encode(sha256(int8send(i)), 'hex')), "
      "'\\x4b4c'::bytea || int8send(i), '\\x3000'::bytea, '{\"n\":' || i || '}', now() "
      "FROM generate_series(1, $1::bigint) i",
      {static_cast<std::int64_t>(kRecords)});
  c.exec("ANALYZE records");
}

std::string imei_of(long i) {
  std::string n = std::to_string(i);
  return "35" + std::string(13 - n.size(), '0') + n;
}

// The partitions named one place off: every chip ID's lookup goes to a partition that lacks it.
backupdb::PartitionMap rotated(const backupdb::PartitionMap& map) {
  std::vector<std::string> names(map.names().begin() + 1, map.names().end());
  names.push_back(map.names().front());
  return backupdb::PartitionMap(std::move(names));
}

}  // namespace

TEST_CASE("the partition the server computes is where PostgreSQL put each of 20,000 records") {
  const auto db = migrated_db("kl_route_hash");
  core::pq::Connection c(db);
  fill(c);
  // As the server's role: the catalog and the probe (satisfies_hash_partition) need no privilege.
  core::pq::Connection role(role_of(db));
  const auto layout = backupdb::read_partition_layout(role, "records", "chip_id");
  REQUIRE_MESSAGE(!layout.map.empty(), layout.reason);
  REQUIRE(layout.map.modulus() == 16);
  for (std::size_t r = 0; r < 16; ++r)
    CHECK(layout.map.names()[r] == (r < 10 ? "records_p0" : "records_p1") + std::to_string(r % 10));

  const auto rows = c.exec("SELECT chip_id, tableoid::regclass::text FROM records");
  REQUIRE(rows.rows() == kRecords);
  int wrong = 0;
  for (int i = 0; i < rows.rows(); ++i)
    if (layout.map.partition_of(rows.text(i, 0)) != rows.text(i, 1)) ++wrong;
  CHECK(wrong == 0);
  CHECK(c.exec("SELECT count(DISTINCT tableoid) FROM records").int64(0, 0) == 16);
}

TEST_CASE("lookups by chip ID and IMEI through the named partition: all found, no fallback finds anything") {
  const auto db = migrated_db("kl_route_store");
  core::pq::Connection c(db);
  fill(c);
  const auto chips = c.exec("SELECT chip_id, imei FROM records ORDER BY seq");
  for (const std::size_t batch : {std::size_t{1}, std::size_t{8}}) {
    CAPTURE(batch);
    backupdb::Store store(role_of(db), 4, 0, {}, batch);
    CHECK(store.partitions_routed() == 0);  // read by the first lookup
    // Four threads, so the batched store pipelines several lookups at once.
    std::vector<std::thread> threads;
    std::atomic<int> missing{0}, wrong{0};
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int i = t; i < 2000; i += 4) {
          const auto by_chip = store.by_chip_id(chips.text(i, 0));
          const auto by_imei = store.by_imei(chips.text(i, 1));
          if (!by_chip || !by_imei) {
            ++missing;
            continue;
          }
          if (by_chip->imei != chips.text(i, 1) || by_imei->chip_id != chips.text(i, 0)) ++wrong;
        }
      });
    for (auto& th : threads) th.join();
    CHECK(missing == 0);
    CHECK(wrong == 0);
    CHECK(store.partitions_routed() == 16);
    CHECK(store.partition_fallback_hits() == 0);
    // Absent: asked of the named partition (and of the parent while the map is young); no fallback hit.
    CHECK_FALSE(static_cast<bool>(store.by_chip_id("FFFFFFFFFFFFFFFFFFFF")));
    CHECK_FALSE(static_cast<bool>(store.by_imei("999999999999999")));
    CHECK(store.partition_fallback_hits() == 0);
    const auto metrics = store.render_metrics();
    CHECK(metrics.find("keyline_backupdb_records_partitions_routed 16\n") != std::string::npos);
    CHECK(metrics.find("keyline_backupdb_partition_fallback_hits_total 0\n") != std::string::npos);
  }
}

TEST_CASE("a wrong partition map: routing goes off within kFallbackSample misses, then every record is found") {
  const auto db = migrated_db("kl_route_wrong");
  core::pq::Connection c(db);
  fill(c);
  const auto layout = backupdb::read_partition_layout(c, "records", "chip_id");
  REQUIRE(layout.map.modulus() == 16);
  const auto chips = c.exec("SELECT chip_id FROM records ORDER BY seq LIMIT 600");
  // Past kYoungMap (every miss checked) and before kLayoutRereadAfter (the catalog read again).
  const std::chrono::seconds old_map(20);
  for (const std::size_t batch : {std::size_t{1}, std::size_t{8}}) {
    CAPTURE(batch);
    backupdb::Store store(role_of(db), 4, 0, {}, batch);
    // By IMEI: record_imei names a chip ID that exists, so its miss is always checked, and the first
    // lookup finds the map wrong.
    store.set_partition_map(rotated(layout.map), old_map);
    CHECK(store.partitions_routed() == 16);
    const auto first = store.by_imei(imei_of(1));
    REQUIRE(static_cast<bool>(first));
    CHECK(first->imei == imei_of(1));
    CHECK(store.partition_routing_off());
    CHECK(store.partition_fallback_hits() == 1);
    CHECK(store.partitions_routed() == 0);

    // By chip ID: a miss is checked once in kFallbackSample, so up to that many lookups of a wrong
    // map's records answer "absent"; once one is found through the parent, routing is off and every
    // lookup after it finds its record.
    store.set_partition_map(rotated(layout.map), old_map);
    CHECK_FALSE(store.partition_routing_off());
    std::vector<std::thread> threads;
    std::atomic<int> lost{0}, lost_after_off{0};
    for (int t = 0; t < 3; ++t)
      threads.emplace_back([&, t] {
        for (int i = t; i < chips.rows(); i += 3) {
          const bool off = store.partition_routing_off();
          if (store.by_chip_id(chips.text(i, 0))) continue;
          ++lost;
          if (off) ++lost_after_off;
        }
      });
    for (auto& th : threads) th.join();
    CHECK(lost <= static_cast<int>(backupdb::Store::kFallbackSample) + 3);  // + one in flight per thread
    CHECK(lost_after_off == 0);
    CHECK(store.partition_routing_off());
    CHECK(store.partition_fallback_hits() >= 2);
    const auto metrics = store.render_metrics();
    CHECK(metrics.find("keyline_backupdb_records_partitions_routed 0\n") != std::string::npos);
    CHECK(metrics.find("keyline_backupdb_partition_fallback_hits_total " +
                       std::to_string(store.partition_fallback_hits()) + "\n") != std::string::npos);
    int found = 0;
    for (int i = 0; i < chips.rows(); ++i) found += store.by_chip_id(chips.text(i, 0)) ? 1 : 0;
    CHECK(found == chips.rows());

    // The right map again: routed, no more fallbacks.
    const auto hits = store.partition_fallback_hits();
    store.set_partition_map(layout.map, old_map);
    CHECK(store.partitions_routed() == 16);
    CHECK(static_cast<bool>(store.by_chip_id("00000000000000000002")));
    CHECK(static_cast<bool>(store.by_imei(imei_of(7))));
    CHECK(store.partition_fallback_hits() == hits);
    CHECK_FALSE(store.partition_routing_off());
  }
}

TEST_CASE("the layout is read again after kLayoutRereadAfter: a stale map is replaced before a miss finds it") {
  const auto db = migrated_db("kl_route_reread");
  core::pq::Connection c(db);
  fill(c);
  const auto layout = backupdb::read_partition_layout(c, "records", "chip_id");
  REQUIRE(layout.map.modulus() == 16);
  backupdb::Store store(role_of(db), 2, 0);
  // A map as a layout changed since it was read leaves it (every record elsewhere), read long enough
  // ago that the next lookup reads the catalog first: that lookup already uses the new map.
  store.set_partition_map(rotated(layout.map), backupdb::Store::kLayoutRereadAfter + std::chrono::seconds(1));
  int found = 0;
  for (int i = 2; i <= 200; i += 2) {
    char chip[32];
    std::snprintf(chip, sizeof chip, "%020X", i);
    found += store.by_chip_id(chip) ? 1 : 0;
  }
  CHECK(found == 100);
  CHECK(store.partition_fallback_hits() == 0);
  CHECK_FALSE(store.partition_routing_off());
  CHECK(store.partitions_routed() == 16);
}

namespace {

// Lookups of the records partitions as PostgreSQL's statistics count them (index and sequential
// scans), once the counts stop moving: a backend reports its counts when it goes idle, at most once
// a second, and when it exits.
std::int64_t partition_scans(core::pq::Connection& c, std::int64_t at_least) {
  const auto read = [&c] {
    return c
        .exec("SELECT (coalesce(sum(idx_scan), 0) + coalesce(sum(seq_scan), 0))::bigint FROM pg_stat_user_tables "
              "WHERE relname LIKE 'records_p%'")
        .int64(0, 0);
  };
  std::int64_t last = read();
  for (int i = 0; i < 100; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const auto now = read();
    if (now >= at_least && now == last) return now;
    last = now;
  }
  return last;
}

}  // namespace

TEST_CASE("an absent chip ID costs one lookup in one partition on a node, not two") {
  const auto db = migrated_db("kl_route_cost");
  core::pq::Connection c(db);
  fill(c);
  const auto layout = backupdb::read_partition_layout(c, "records", "chip_id");
  REQUIRE(layout.map.modulus() == 16);
  constexpr int kAbsent = 1200;
  for (const std::size_t batch : {std::size_t{1}, std::size_t{8}}) {
    CAPTURE(batch);
    const auto before = partition_scans(c, 0);
    {
      backupdb::Store store(role_of(db), 4, 0, {}, batch);
      store.set_partition_map(layout.map, std::chrono::seconds(20));  // not young: misses are sampled
      std::vector<std::thread> threads;
      std::atomic<int> found{0};
      for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
          for (int i = t; i < kAbsent; i += 4) {
            char chip[32];
            std::snprintf(chip, sizeof chip, "FA%018d", i);  // neither fill pattern makes these
            if (store.by_chip_id(chip)) ++found;
          }
        });
      for (auto& th : threads) th.join();
      CHECK(found == 0);
      CHECK(store.partition_fallback_hits() == 0);
    }  // the sessions close: their counts reach the statistics
    const auto scans = partition_scans(c, before + kAbsent) - before;
    const double per_404 = static_cast<double>(scans) / kAbsent;
    MESSAGE("batch " << batch << ": " << scans << " partition scans for " << kAbsent << " absent chip IDs ("
                     << per_404 << " per 404)");
    CHECK(scans >= kAbsent);  // each asked of its partition once
    CHECK(per_404 <= 1.1);    // and of the parent one time in kFallbackSample (it was 2.0)
  }
}

TEST_CASE("any other layout is not routed: the lookups go through the parent table") {
  const auto db = migrated_db("kl_route_other");
  core::pq::Connection c(db);
  const auto reason = [&c](const std::string& table, const std::string& column) {
    const auto l = backupdb::read_partition_layout(c, table, column);
    CHECK(l.map.empty());
    return l.reason;
  };
  CHECK(reason("log_entries", "leaf_index") == "log_entries is not partitioned");
  CHECK(reason("no_such_table", "chip_id") == "no_such_table is not partitioned");
  CHECK(reason("records", "imei") == "records is not hash-partitioned by imei alone");
  // migrate grants the server's role each partition; without that, its lookups use the parent.
  c.exec("REVOKE SELECT ON records_p03 FROM keyline_backupdb");
  {
    core::pq::Connection role(role_of(db));
    CHECK(backupdb::read_partition_layout(role, "records", "chip_id").reason ==
          "this role may not read records_p03 by its name");
    backupdb::Store store(role_of(db), 1, 0);
    CHECK_FALSE(static_cast<bool>(store.by_chip_id("00000000000000000002")));
    CHECK(store.partitions_routed() == 0);
  }
  backupdb::Config cfg;
  cfg.db = db;
  cfg.role_password.assign(kRolePassword, kRolePassword + std::strlen(kRolePassword));
  backupdb::migrate(cfg);
  {
    core::pq::Connection role(role_of(db));
    CHECK(backupdb::read_partition_layout(role, "records", "chip_id").map.modulus() == 16);
  }
  c.exec("CREATE TABLE two_keys (a text, b text) PARTITION BY HASH (a, b)");
  CHECK(reason("two_keys", "a") == "two_keys is not hash-partitioned by a alone");
  c.exec("CREATE TABLE by_int (a int) PARTITION BY HASH (a)");
  c.exec("CREATE TABLE by_int_0 PARTITION OF by_int FOR VALUES WITH (MODULUS 1, REMAINDER 0)");
  CHECK(reason("by_int", "a").find("not text") != std::string::npos);
  c.exec("CREATE TABLE by_range (a text) PARTITION BY RANGE (a)");
  CHECK(reason("by_range", "a") == "by_range is not hash-partitioned by a alone");
  c.exec("CREATE TABLE none_yet (a text) PARTITION BY HASH (a)");
  CHECK(reason("none_yet", "a") == "none_yet has no partitions");
  // Mixed moduli (2 and 4) and a gap (remainder 1 of 4 missing).
  c.exec("CREATE TABLE mixed (a text) PARTITION BY HASH (a)");
  c.exec("CREATE TABLE mixed_0 PARTITION OF mixed FOR VALUES WITH (MODULUS 2, REMAINDER 0)");
  c.exec("CREATE TABLE mixed_1 PARTITION OF mixed FOR VALUES WITH (MODULUS 4, REMAINDER 1)");
  c.exec("CREATE TABLE mixed_3 PARTITION OF mixed FOR VALUES WITH (MODULUS 4, REMAINDER 3)");
  CHECK(reason("mixed", "a") == "mixed's partitions are not of one modulus, one for each remainder");
  c.exec("CREATE TABLE gap (a text) PARTITION BY HASH (a)");
  c.exec("CREATE TABLE gap_0 PARTITION OF gap FOR VALUES WITH (MODULUS 4, REMAINDER 0)");
  c.exec("CREATE TABLE gap_2 PARTITION OF gap FOR VALUES WITH (MODULUS 4, REMAINDER 2)");
  CHECK(reason("gap", "a") == "gap's partitions are not of one modulus, one for each remainder");
  // A nondeterministic collation hashes a sort key, not the bytes.
  c.exec("CREATE COLLATION kl_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)");
  c.exec("CREATE TABLE ci (a text COLLATE kl_ci) PARTITION BY HASH (a)");
  c.exec("CREATE TABLE ci_0 PARTITION OF ci FOR VALUES WITH (MODULUS 1, REMAINDER 0)");
  CHECK(reason("ci", "a").find("deterministic") != std::string::npos);
  // One of the same shape as records, for contrast: routed.
  c.exec("CREATE TABLE same (a text PRIMARY KEY) PARTITION BY HASH (a)");
  for (int r = 0; r < 5; ++r)
    c.exec("CREATE TABLE same_" + std::to_string(r) +
           " PARTITION OF same FOR VALUES WITH (MODULUS 5, REMAINDER " + std::to_string(r) + ")");
  const auto same = backupdb::read_partition_layout(c, "same", "a");
  CHECK(same.map.modulus() == 5);

  // The records before 0005 (one table): the store reads them through the parent, as before.
  const auto old_db = test::pg_env().create_database("kl_route_old");
  core::pq::Connection old(old_db);
  std::vector<core::Migration> before;
  for (const auto& m : backupdb::embedded_migrations())
    if (std::atoi(m.file) < 5) before.push_back(m);
  core::apply_migrations(old, "schema_migrations", before);
  CHECK(backupdb::read_partition_layout(old, "records", "chip_id").reason == "records is not partitioned");
  old.exec(
      "INSERT INTO records (chip_id, imei, record_hash, backup, identity_der, body_json, published_at) "
      "VALUES ('00000000000000000009', '350000000000009', repeat('A', 64), '\\x4b4c', '\\x3000', '{}', "
      "now())");
  backupdb::Store store(old_db, 2, 0);
  CHECK(static_cast<bool>(store.by_chip_id("00000000000000000009")));
  CHECK(static_cast<bool>(store.by_imei("350000000000009")));
  CHECK(store.partitions_routed() == 0);
  CHECK(store.partition_fallback_hits() == 0);
}
