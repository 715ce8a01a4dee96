// The KeySource interface (keyline/station/key_source.h), written once and run against every source
// (TEST_CASE_TEMPLATE over generate and pool): real PostgreSQL and the real SoftHSM token.
#include <doctest/doctest.h>

#include <atomic>
#include <set>
#include <stdexcept>
#include <thread>

#include <botan/pk_keys.h>

#include "keyline/core/cplc.h"
#include "keyline/station/key_source.h"
#include "keyline/station/personalize.h"
#include "station_fixture.h"

using namespace keyline;
using namespace keyline::station;
using namespace keyline::station::test_fixture;

namespace {

struct Generate {
  static constexpr const char* name = "generate";
  static constexpr bool uses_key_pool = false;
};
struct Pool {
  static constexpr const char* name = "pool";
  static constexpr bool uses_key_pool = true;
};

// A claim writer as the flow's is: one statement through `exec` that takes the IMEI (the lowest free
// one, or the one the source gave) and remembers it as spent; `fail` makes the statement fail after
// its DELETE, so that nothing of it may stay.
struct TestWriter {
  int calls = 0;
  std::string imei;
  bool fail = false;
  ClaimWriter writer() {
    return [this](const ClaimExec& exec, const std::string& given, const DeviceKeys&) {
      ++calls;
      const char* take =
          "WITH c AS (SELECT imei FROM pool.imei ORDER BY imei LIMIT 1 FOR UPDATE SKIP LOCKED),"
          " d AS (DELETE FROM pool.imei p USING c WHERE p.imei = c.imei RETURNING p.imei)"
          " INSERT INTO pool.imei_spent (imei) SELECT imei FROM d RETURNING imei";
      const char* record = "INSERT INTO pool.imei_spent (imei) VALUES ($1) RETURNING imei";
      const char* failing = "WITH d AS (DELETE FROM pool.imei RETURNING imei) SELECT 1 / (count(*) - count(*)) FROM d";
      const auto r = fail ? exec(failing, {}) : given.empty() ? exec(take, {}) : exec(record, {given});
      if (r.empty()) throw core::Error(errc::PoolEmpty, "test writer: no IMEI");
      imei = r.text(0, 0);
    };
  }
};

struct Setup {
  StationConfig cfg = station_config();
  StationKeys keys = StationKeys::open(cfg, 4);
  std::string conninfo;
  core::pq::Connection db;
  explicit Setup(const char* prefix) : db(fresh_station_db(prefix, &conninfo)) {
    pool_generate_imeis(db, "35780502", 4);
    pool_generate_keys(db, *keys.token, 4);
  }
  std::int64_t imeis() { return count(db, "SELECT count(*) FROM pool.imei"); }
  std::int64_t key_sets() { return count(db, "SELECT count(*) FROM pool.device_key"); }
};

}  // namespace

TEST_CASE_TEMPLATE("a key source's claim takes one IMEI (and at most one key set) with the journal write", Source,
                   Generate, Pool) {
  Setup s("st_ks_claim");
  auto source = make_key_source(Source::name, *s.keys.token);
  CHECK(std::string(source->name()) == Source::name);
  JournalDb jdb(s.db);
  TestWriter w;
  const DeviceKeys k = source->claim(jdb, w.writer());
  CHECK(w.calls == 1);
  CHECK(core::Imei::is_valid(w.imei));
  CHECK(s.imeis() == 3);
  CHECK(s.key_sets() == (Source::uses_key_pool ? 3 : 4));
  CHECK(count(s.db, "SELECT count(*) FROM pool.imei_spent WHERE imei = $1", {w.imei}) == 1);
  // The public halves are the private keys' own.
  const PublicHalves derived = derive_public_halves(k.identity_pkcs8, k.transport_raw);
  CHECK(derived.identity == k.pub.identity);
  CHECK(derived.transport == k.pub.transport);
  // What the issue step certifies and packs: the same keys.
  CHECK(source->identity_key(k)->subject_public_key() == k.pub.identity);
  core::DataPackage pkg;
  source->fill_package(pkg, k);
  CHECK(pkg.identity_key == k.identity_pkcs8);
  CHECK(pkg.transport_key == k.transport_raw);
}

TEST_CASE_TEMPLATE("a key source's claim is all or nothing: a failing journal write leaves the pools as they were",
                   Source, Generate, Pool) {
  Setup s("st_ks_fail");
  auto source = make_key_source(Source::name, *s.keys.token);
  JournalDb jdb(s.db);
  TestWriter w;
  w.fail = true;
  CHECK_THROWS_AS(source->claim(jdb, w.writer()), core::DbError);
  CHECK(w.calls == 1);
  CHECK(s.imeis() == 4);
  CHECK(s.key_sets() == 4);
  CHECK(count(s.db, "SELECT count(*) FROM pool.imei_spent") == 0);
  // And the next claim works.
  w.fail = false;
  source->claim(jdb, w.writer());
  CHECK(s.imeis() == 3);
}

TEST_CASE_TEMPLATE("a key source reopens a journal row's keys for that chip only", Source, Generate, Pool) {
  Setup s("st_ks_reopen");
  auto source = make_key_source(Source::name, *s.keys.token);
  JournalDb jdb(s.db);
  TestWriter w;
  const DeviceKeys k = source->claim(jdb, w.writer());
  const core::ChipId chip = core::ChipId::parse("4B4C0001000000010001");
  const core::ChipId other = core::ChipId::parse("4B4C0001000000020001");
  JournalKeys row;
  row.row_id = 7;
  row.identity_public = k.pub.identity;
  row.transport_public = k.pub.transport;
  row.identity_wrapped = s.keys.token->wrap_data(key_label::wrap, k.identity_pkcs8,
                                                 journal_key_aad(chip, KeyKind::Identity, k.pub.identity));
  row.transport_wrapped = s.keys.token->wrap_data(key_label::wrap, k.transport_raw,
                                                  journal_key_aad(chip, KeyKind::Transport, k.pub.transport));
  const DeviceKeys again = source->reopen(chip, row);
  CHECK(again.identity_pkcs8 == k.identity_pkcs8);
  CHECK(again.transport_raw == k.transport_raw);
  CHECK(again.pub.identity == k.pub.identity);
  try {
    source->reopen(other, row);
    FAIL("another chip's row opened");
  } catch (const core::Error& e) {
    CHECK(e.code() == errc::KeyMismatch);
  }
  JournalKeys swapped = row;
  swapped.transport_public = derive_public_halves(again.identity_pkcs8, core::SecureBytes(32, 0x42)).transport;
  try {
    source->reopen(chip, swapped);
    FAIL("a row with another public half opened");
  } catch (const core::Error& e) {
    CHECK(e.code() == errc::KeyMismatch);
  }
}

TEST_CASE_TEMPLATE("concurrent claims of a key source never share an IMEI or a key set", Source, Generate, Pool) {
  Setup s("st_ks_conc");
  const std::string ci = s.conninfo;
  std::vector<std::string> imeis(4);
  std::vector<core::Bytes> identities(4);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      try {
        core::pq::Connection c(ci);
        JournalDb jdb(c);
        auto source = make_key_source(Source::name, *s.keys.token);
        TestWriter w;
        identities[i] = source->claim(jdb, w.writer()).pub.identity;
        imeis[i] = w.imei;
      } catch (const std::exception& e) {
        MESSAGE(e.what());
        ++failures;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  CHECK(std::set<std::string>(imeis.begin(), imeis.end()).size() == 4);
  CHECK(std::set<core::Bytes>(identities.begin(), identities.end()).size() == 4);
  CHECK(s.imeis() == 0);
  CHECK(s.key_sets() == (Source::uses_key_pool ? 0 : 4));
}

TEST_CASE("make_key_source names the three sources and refuses any other") {
  const auto cfg = station_config();
  auto keys = StationKeys::open(cfg, 1);
  for (const char* name : {"generate", "pool", "device"}) CHECK(std::string(make_key_source(name, *keys.token)->name()) == name);
  CHECK(make_key_source("device", *keys.token)->keys_in_device());
  CHECK_FALSE(make_key_source("generate", *keys.token)->keys_in_device());
  CHECK_THROWS_AS(make_key_source("chip", *keys.token), core::ConfigError);
  CHECK_THROWS_AS(make_key_source("", *keys.token), core::ConfigError);
}
