// The server names the partition of a chip ID lookup itself (backupdb/src/pg_partition_hash.h,
// issue #20): PostgreSQL's own hash of the chip ID, with the layout read from the catalog. Checked
// against where PostgreSQL put 20,000 records (tableoid), through the Store as the server's role, and
// with a wrong partition map injected: a lookup then costs a second statement, never a record. On the
// fixture PostgreSQL cluster, a database per test case.
#include <doctest/doctest.h>

#include <atomic>
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
#include "testenv.h"

using namespace keyline;

namespace {

constexpr const char* kRolePassword =
    "kl-test-role-pw";  // as integration_backupdb's: the role is cluster-wide
constexpr long kRecords = 20000;

std::string migrated_db(const std::string& prefix) {
  const auto db = test::pg_env().create_database(prefix);
  backupdb::Config cfg;
  cfg.db = db;
  cfg.role_password.assign(kRolePassword, kRolePassword + std::strlen(kRolePassword));
  backupdb::migrate(cfg);
  return db;
}

std::string role_of(const std::string& owner) {
  const auto env = test::pg_env();
  const auto at = owner.find("dbname=");
  const auto name = owner.substr(at + 7, owner.find(' ', at) - at - 7);
  return "host=" + env.host + " port=" + std::to_string(env.port) +
         " user=keyline_backupdb password=" + kRolePassword + " dbname=" + name + " connect_timeout=5";
}

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
    // Absent: asked of the named partition, then of the parent; still absent, and no fallback hit.
    CHECK_FALSE(static_cast<bool>(store.by_chip_id("FFFFFFFFFFFFFFFFFFFF")));
    CHECK_FALSE(static_cast<bool>(store.by_imei("999999999999999")));
    CHECK(store.partition_fallback_hits() == 0);
    const auto metrics = store.render_metrics();
    CHECK(metrics.find("keyline_backupdb_records_partitions_routed 16\n") != std::string::npos);
    CHECK(metrics.find("keyline_backupdb_partition_fallback_hits_total 0\n") != std::string::npos);
  }
}

TEST_CASE("a wrong partition map loses no record: the parent table finds it, and the metric counts it") {
  const auto db = migrated_db("kl_route_wrong");
  core::pq::Connection c(db);
  fill(c);
  const auto layout = backupdb::read_partition_layout(c, "records", "chip_id");
  REQUIRE(layout.map.modulus() == 16);
  for (const std::size_t batch : {std::size_t{1}, std::size_t{8}}) {
    CAPTURE(batch);
    backupdb::Store store(role_of(db), 4, 0, {}, batch);
    store.set_partition_map(rotated(layout.map));
    constexpr int kLookups = 300;
    std::vector<std::thread> threads;
    std::atomic<int> found{0};
    for (int t = 0; t < 3; ++t)
      threads.emplace_back([&, t] {
        for (int i = 1 + t; i <= kLookups; i += 3) {
          const auto r = store.by_imei(imei_of(i));
          if (r && store.by_chip_id(r->chip_id) && r->imei == imei_of(i)) ++found;
        }
      });
    for (auto& th : threads) th.join();
    CHECK(found == kLookups);
    // Each record twice (by IMEI, then by chip ID), each time in the wrong partition first.
    CHECK(store.partition_fallback_hits() == 2 * kLookups);
    CHECK(store.render_metrics().find("keyline_backupdb_partition_fallback_hits_total 600\n") !=
          std::string::npos);
    // The right map again: no more fallbacks.
    store.set_partition_map(layout.map);
    CHECK(static_cast<bool>(store.by_chip_id("00000000000000000002")));
    CHECK(store.partition_fallback_hits() == 2 * kLookups);
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
