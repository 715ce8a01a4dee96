// The records hash-partitioned by chip ID (backupdb/migrations/0005_records_partitioned.sql): the
// migration of a table that already holds records and their log entries, a bulk-filled partitioned
// table, and 32 publishers racing on the same chip IDs and IMEIs through the backupdb library's
// Store, each race won by exactly one. On the fixture PostgreSQL cluster, a database per test case.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "keyline/backupdb/migrate.h"
#include "keyline/backupdb/store.h"
#include "keyline/core/cplc.h"
#include "keyline/core/imei.h"
#include "keyline/core/pq.h"
#include "keyline/core/record.h"
#include "partition_db.h"
#include "testenv.h"

using namespace keyline;

namespace {

constexpr int kPublishers = 32;

using partition_db::migrated_db;
using partition_db::role_of;

// Chip IDs and IMEIs of the races: "F" chip IDs and TAC 86000000, never those of the bulk rows.
std::string race_chip(int round, int n) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "F%07X%012X", round, n);
  return buf;
}
std::string race_imei(int round, int n) {
  return core::Imei::from_tac_serial("86000000", static_cast<std::uint32_t>(round * 1000 + n)).str();
}

core::Record record_of(const std::string& chip, const std::string& imei, std::uint8_t content) {
  core::Record r;
  r.chip_id = core::ChipId::parse(chip);
  r.imei = core::Imei::parse(imei);
  r.backup = core::Bytes{0x4b, 0x4c, content};
  r.certificates = {core::Bytes{0x30, 0x03, 0x02, 0x01, content}};
  return r;
}

// A barrier for one race: every publisher waits until all have arrived, then all go at once.
class StartLine {
 public:
  void arrive_and_wait() {
    std::unique_lock<std::mutex> g(m_mutex);
    if (++m_arrived == kPublishers) m_cv.notify_all();
    m_cv.wait(g, [this] { return m_arrived >= kPublishers; });
  }

 private:
  std::mutex m_mutex;
  std::condition_variable m_cv;
  int m_arrived = 0;
};

struct Outcome {
  backupdb::PublishResult result;
  std::string chip, imei;
};

// One race: publisher t publishes make(t); all start together.
std::vector<Outcome> race(backupdb::Store& store, const std::function<core::Record(int)>& make) {
  std::vector<Outcome> out(kPublishers);
  StartLine line;
  std::vector<std::thread> threads;
  for (int t = 0; t < kPublishers; ++t) {
    threads.emplace_back([&, t] {
      const auto rec = make(t);
      line.arrive_and_wait();
      out[static_cast<std::size_t>(t)] = {store.publish(rec, rec.hash()), rec.chip_id.str(), rec.imei.str()};
    });
  }
  for (auto& th : threads) th.join();
  return out;
}

int count(const std::vector<Outcome>& o, backupdb::PublishOutcome what, const std::string& on = "") {
  int n = 0;
  for (const auto& x : o)
    if (x.result.outcome == what && (on.empty() || x.result.conflict_on == on)) ++n;
  return n;
}

// What must hold whatever the interleaving: no chip ID or IMEI twice across partitions, an IMEI row
// for every record and none without one, log indexes dense and each on its own record.
void check_invariants(core::pq::Connection& c) {
  CHECK(c.exec("SELECT count(*) - count(DISTINCT chip_id) FROM records").int64(0, 0) == 0);
  CHECK(c.exec("SELECT count(*) - count(DISTINCT imei) FROM records").int64(0, 0) == 0);
  CHECK(c.exec("SELECT count(*) FROM records r FULL JOIN record_imei i ON i.imei = r.imei AND i.chip_id = r.chip_id "
               "WHERE r.chip_id IS NULL OR i.imei IS NULL")
            .int64(0, 0) == 0);
  const auto log = c.exec(
      "SELECT count(*), coalesce(max(leaf_index) + 1, 0), (SELECT next_index FROM log_sequence), "
      "count(DISTINCT record_seq), (SELECT count(*) FROM log_entries e JOIN records r ON r.seq = e.record_seq) "
      "FROM log_entries");
  CHECK(log.int64(0, 0) == log.int64(0, 1));
  CHECK(log.int64(0, 0) == log.int64(0, 2));
  CHECK(log.int64(0, 0) == log.int64(0, 3));
  CHECK(log.int64(0, 0) == log.int64(0, 4));
}

// The bulk rows, as scripts/bench_backupdb.sh makes them: one INSERT ... SELECT generate_series as
// the owner (the IMEI trigger runs for each row).
double fill(core::pq::Connection& c, long n) {
  const auto t0 = std::chrono::steady_clock::now();
  c.exec(
      "INSERT INTO records (chip_id, imei, record_hash, backup, identity_der, body_json, published_at) "
      "SELECT upper(lpad(to_hex(i), 20, '0')), '35' || lpad(i::text, 13, '0'), upper(encode(sha256(int8send(i)), 'hex')), "
      "'\\x4b4c'::bytea || int8send(i), '\\x3000'::bytea, '{\"n\":' || i || '}', now() "
      "FROM generate_series(1, $1::bigint) i",
      {static_cast<std::int64_t>(n)});
  c.exec("ANALYZE records");
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

long bulk_records() {
  // Issue #20 asks for the races on a partitioned table of a million records, so the suite fills
  // 1,000,000 (these rows are small: the fill is the trigger and the index inserts); KEYLINE_PARTITION_RECORDS
  // sets another count.
  const char* env = std::getenv("KEYLINE_PARTITION_RECORDS");
  return env ? std::atol(env) : 1000000;
}

}  // namespace

TEST_CASE("0005 partitions a records table that holds records and log entries; indexes and lookups survive") {
  const auto db = test::pg_env().create_database("kl_part_mig");
  core::pq::Connection c(db);
  std::vector<core::Migration> before;
  for (const auto& m : backupdb::embedded_migrations())
    if (std::atoi(m.file) < 5) before.push_back(m);
  core::apply_migrations(c, "schema_migrations", before);
  std::map<std::string, std::int64_t> index_of;
  {
    backupdb::Store old(db, 4, 0);
    for (int i = 0; i < 40; ++i) {
      const auto rec = record_of(race_chip(0, i), race_imei(0, i), 1);
      const auto res = old.publish(rec, rec.hash());
      REQUIRE(res.outcome == backupdb::PublishOutcome::Created);
      index_of[rec.chip_id.str()] = res.leaf_index;
    }
  }
  CHECK(c.exec("SELECT count(*) FROM pg_partitioned_table").int64(0, 0) == 0);
  CHECK(core::apply_migrations(c, "schema_migrations", backupdb::embedded_migrations()) >= 1);
  CHECK(c.exec("SELECT count(*) FROM pg_inherits WHERE inhparent = 'records'::regclass").int64(0, 0) == 16);
  CHECK(c.exec("SELECT count(*) FROM record_imei").int64(0, 0) == 40);
  check_invariants(c);

  backupdb::Store store(db, 4, 0);
  for (const auto& [chip, index] : index_of) {
    const auto r = store.by_chip_id(chip);
    REQUIRE(static_cast<bool>(r));
    CHECK(r->leaf_index == index);
    CHECK(store.by_imei(r->imei)->chip_id == chip);
  }
  // After the migration: the IMEI is still unique across partitions, the log goes on from 40.
  const auto taken = record_of(race_chip(1, 0), race_imei(0, 7), 2);
  const auto refused = store.publish(taken, taken.hash());
  CHECK(refused.outcome == backupdb::PublishOutcome::Conflict);
  CHECK(refused.conflict_on == "imei");
  CHECK(refused.leaf_index == index_of[race_chip(0, 7)]);
  const auto fresh = record_of(race_chip(1, 1), race_imei(1, 1), 2);
  CHECK(store.publish(fresh, fresh.hash()).leaf_index == 40);
  // Permanent as before: no role removes a record or an IMEI claim.
  CHECK_THROWS(c.exec("DELETE FROM records WHERE chip_id = $1", {race_chip(0, 1)}));
  CHECK_THROWS(c.exec("DELETE FROM record_imei"));
  CHECK_THROWS(c.exec("TRUNCATE records_p03"));
  check_invariants(c);
}

TEST_CASE("partitioned records, bulk-filled: 32 publishers racing on chip IDs and IMEIs, exactly one wins each") {
  const auto db = migrated_db("kl_part_race");
  core::pq::Connection c(db);
  const long n = bulk_records();
  const double secs = fill(c, n);
  MESSAGE("filled " << n << " records into 16 partitions in " << secs << " s");
  CHECK(c.exec("SELECT count(*) FROM records").int64(0, 0) == n);
  CHECK(c.exec("SELECT count(*) FROM record_imei").int64(0, 0) == n);
  // Spread over all sixteen partitions by the hash of the chip ID.
  CHECK(c.exec("SELECT count(DISTINCT tableoid) FROM records").int64(0, 0) == 16);

  // As the server's role: it publishes through the IMEI trigger but cannot claim an IMEI itself.
  core::pq::Connection role(role_of(db));
  CHECK_THROWS(role.exec("INSERT INTO record_imei (imei, chip_id) VALUES ('861000000000001', 'FFFFFFFFFFFFFFFFFFFF')"));
  backupdb::Store store(role_of(db), 16, 0);
  REQUIRE(static_cast<bool>(store.by_chip_id("00000000000000000007")));
  CHECK(store.by_imei("350000000000007")->chip_id == "00000000000000000007");

  constexpr int kRounds = 8;
  for (int k = 1; k <= kRounds; ++k) {
    // One chip ID, 32 IMEIs: one record, 31 chip ID conflicts.
    auto o = race(store, [k](int t) { return record_of(race_chip(k, 0), race_imei(k, t), static_cast<std::uint8_t>(t)); });
    CHECK(count(o, backupdb::PublishOutcome::Created) == 1);
    CHECK(count(o, backupdb::PublishOutcome::Conflict, "chip_id") == kPublishers - 1);
    // 32 chip IDs (so 32 partitions' worth of hashes), one IMEI: one record, 31 IMEI conflicts.
    o = race(store, [k](int t) { return record_of(race_chip(k, 100 + t), race_imei(k, 100), 1); });
    CHECK(count(o, backupdb::PublishOutcome::Created) == 1);
    CHECK(count(o, backupdb::PublishOutcome::Conflict, "imei") == kPublishers - 1);
    // The same record 32 times: one 201, 31 identical re-publishes with its log index.
    o = race(store, [k](int) { return record_of(race_chip(k, 200), race_imei(k, 200), 9); });
    CHECK(count(o, backupdb::PublishOutcome::Created) == 1);
    CHECK(count(o, backupdb::PublishOutcome::Identical) == kPublishers - 1);
    for (const auto& x : o) CHECK(x.result.leaf_index == o.front().result.leaf_index);
    // Crossed: 4 chip IDs x 8 IMEIs; whatever the order, every winner holds its chip ID and IMEI alone.
    o = race(store, [k](int t) { return record_of(race_chip(k, 300 + t % 4), race_imei(k, 300 + t / 4), 3); });
    std::set<std::string> chips, imeis;
    for (const auto& x : o) {
      if (x.result.outcome != backupdb::PublishOutcome::Created) continue;
      CHECK(chips.insert(x.chip).second);
      CHECK(imeis.insert(x.imei).second);
      const auto stored = store.by_chip_id(x.chip);
      REQUIRE(static_cast<bool>(stored));
      CHECK(stored->imei == x.imei);
    }
    CHECK(!chips.empty());
    CHECK(chips.size() <= 4);
    for (const auto& x : o)
      if (x.result.outcome == backupdb::PublishOutcome::Conflict) CHECK((chips.count(x.chip) || imeis.count(x.imei)));
  }
  CHECK(c.exec("SELECT count(*) FROM records").int64(0, 0) >= n + 3 * kRounds + kRounds);
  check_invariants(c);
}
