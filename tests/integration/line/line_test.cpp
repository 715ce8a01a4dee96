// The line engine in process (issue #7) against the real PostgreSQL cluster, the real SoftHSM token
// and real emulated devices (the keyline-device program over TCP): profile parsing, --count, a
// device that is not there, and "done only once published" when no public DB is configured.
#include <doctest/doctest.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "keyline/core/error.h"
#include "keyline/core/pq.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"
#include "keyline/station/line.h"
#include "keyline/station/pool.h"
#include "station_fixture.h"
#include "testenv.h"

namespace fs = std::filesystem;
using namespace keyline;
using namespace keyline::station;

using test_fixture::count;
using test_fixture::Fleet;

namespace {

std::string write_temp(const std::string& name, const std::string& text) {
  const std::string path = test::testenv_dir() + "/line-" + std::to_string(::getpid()) + "-" + name;
  std::ofstream(path, std::ios::trunc) << text;
  return path;
}

// The line engine's station.
StationConfig line_config() {
  static const StationConfig cfg = test_fixture::fixture_station_config("itest-line");
  return cfg;
}

}  // namespace

TEST_CASE("line profile: fields, fleet ports and clear refusals") {
  const auto p = load_profile(write_temp("ok.json", R"({"devices": ["127.0.0.1:4000", "h:1"], "concurrency": 32,
      "fleet_ports": "10.0.0.1:5000:3", "tac": "35780502", "pool_low_water": 10, "pool_refill": 100,
      "key_source": "pool", "application_items": {"0F01": "CAFE"}})"));
  REQUIRE(p.devices.size() == 5);
  CHECK(p.devices[4].endpoint == "10.0.0.1:5002");
  CHECK(p.concurrency == 32);
  CHECK(p.key_source == "pool");
  REQUIRE(p.app_items.size() == 1);
  CHECK(p.app_items[0].first == 0x0F01);
  CHECK(p.app_items[0].second == core::Bytes{0xCA, 0xFE});
  CHECK(fleet_ports("7000:2").at(1).endpoint == "127.0.0.1:7001");

  const auto refused = [](const std::string& json, const std::string& needle) {
    try {
      load_profile(write_temp("bad.json", json));
    } catch (const core::ConfigError& e) {
      CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
      return;
    }
    FAIL("accepted: " << json);
  };
  refused(R"({"concurrency": 0})", "concurrency");
  refused(R"({"devices": ["no-port"]})", "devices[0]");
  refused(R"({"application_items": {"0101": "00"}})", "outside 0F01-0FFF");
  refused(R"({"application_items": {"0F01": "zz"}})", "not hex");
  refused(R"({"tac": "1234"})", "8 digits");
  refused(R"({"tac": "35780502", "pool_low_water": 5})", "pool top-up");
  refused(R"({"devise": []})", "unknown field");
  refused("[1]", "not a JSON object");
  CHECK_THROWS_AS(fleet_ports("70000:2"), core::ConfigError);
  CHECK_THROWS_AS(fleet_ports("x:2"), core::ConfigError);
}

TEST_CASE("run: without a public DB nothing counts as done; --count stops the line; a missing device claims nothing") {
  auto cfg = line_config();
  cfg.db = test::pg_env().create_database("line");
  cfg.backupdb_url.clear();
  core::pq::Connection db(cfg.db);
  migrate_station_db(db);
  pool_generate_imeis(db, "35780502", 20);

  Fleet fleet(8, cfg.pki_dir + "/root.pem");
  LineProfile profile;
  profile.devices = read_fleet_file(fleet.fleet_file());
  profile.concurrency = 3;
  profile.app_items = {{0x0F01, core::Bytes{1, 2, 3}}};
  LineOptions opt;
  opt.count = 3;
  opt.publish_wait_ms = 500;
  std::ostringstream out;
  const auto s = run_line(cfg, profile, opt, out);
  // Records wait in the outbox: backed up, never "done".
  CHECK(s.done == 0);
  CHECK(s.failed == 0);
  CHECK(s.publishing == 3);
  CHECK(s.skipped == 5);
  CHECK(count(db, "SELECT count(*) FROM journal.device WHERE state = 'backed_up'") == 3);
  CHECK(count(db, "SELECT count(*) FROM journal.outbox WHERE published_at IS NULL") == 3);
  CHECK(count(db, "SELECT count(*) FROM journal.device WHERE identity_wrapped IS NOT NULL") == 0);
  CHECK(out.str().find("line: done 0") != std::string::npos);

  // A device address nobody answers on: one failure, no claim, the IMEI stays in the pool.
  const auto before = count(db, "SELECT count(*) FROM pool.imei");
  LineProfile gone;
  gone.devices = {{"127.0.0.1:" + std::to_string(test::free_port()), ""}};
  LineOptions opt2;
  opt2.publish_wait_ms = 0;
  opt2.device_attempts = 2;
  const auto s2 = run_line(cfg, gone, opt2, out);
  CHECK(s2.failed == 1);
  REQUIRE(s2.failures.size() == 1);
  CHECK(s2.failures[0].find("step connect") != std::string::npos);
  CHECK(count(db, "SELECT count(*) FROM pool.imei") == before);
  CHECK(count(db, "SELECT count(*) FROM journal.device") == 3);
}

// A pool key set whose stored public half disagrees with its private key (error 4013) is quarantined
// by the personalizer; the line must try that device again (it is still blank), not count it failed.
TEST_CASE("run: a device whose pooled key set was quarantined (4013) is retried with the next set") {
  auto cfg = line_config();
  cfg.db = test::pg_env().create_database("line_keymismatch");
  cfg.backupdb_url.clear();
  cfg.key_source = "pool";
  core::pq::Connection db(cfg.db);
  migrate_station_db(db);
  pool_generate_imeis(db, "35780502", 4);
  {
    auto keys = StationKeys::open(cfg, 2);
    pool_generate_keys(db, *keys.token, 3);
  }
  // The first set (claimed first) gets the second set's transport public half.
  db.exec("UPDATE pool.device_key SET transport_public = (SELECT transport_public FROM pool.device_key ORDER BY id"
          " OFFSET 1 LIMIT 1) WHERE id = (SELECT min(id) FROM pool.device_key)");

  Fleet fleet(1, cfg.pki_dir + "/root.pem");
  LineProfile profile;
  profile.devices = read_fleet_file(fleet.fleet_file());
  profile.concurrency = 1;
  LineOptions opt;
  opt.publish_wait_ms = 0;
  opt.device_attempts = 3;
  std::ostringstream out;
  const auto s = run_line(cfg, profile, opt, out);
  INFO(out.str());
  CHECK(s.failed == 0);
  CHECK(s.publishing == 1);
  CHECK(count(db, "SELECT count(*) FROM pool.device_key_quarantine") == 1);
  CHECK(count(db, "SELECT count(*) FROM journal.device WHERE state = 'backed_up'") == 1);
}

// Key sets that never open on this token (another station's pool, a re-initialised token) must not
// drain the whole shared pool into the quarantine: the line halts after a few in a row and says why.
TEST_CASE("run: stored key sets that do not open several times in a row halt the line before the pool is spent") {
  auto cfg = line_config();
  cfg.db = test::pg_env().create_database("line_keyhalt");
  cfg.backupdb_url.clear();
  cfg.key_source = "pool";
  core::pq::Connection db(cfg.db);
  migrate_station_db(db);
  pool_generate_imeis(db, "35780502", 8);
  {
    auto keys = StationKeys::open(cfg, 2);
    pool_generate_keys(db, *keys.token, 6);
  }
  // Every identity blob moved one row on: each is bound to another row, so none opens.
  db.exec("WITH r AS (SELECT id, identity_wrapped, row_number() OVER (ORDER BY id) AS rn, count(*) OVER () AS n"
          " FROM pool.device_key) UPDATE pool.device_key d SET identity_wrapped = b.identity_wrapped"
          " FROM r a JOIN r b ON b.rn = a.rn % a.n + 1 WHERE d.id = a.id");

  Fleet fleet(2, cfg.pki_dir + "/root.pem");
  LineProfile profile;
  profile.devices = read_fleet_file(fleet.fleet_file());
  profile.concurrency = 1;
  LineOptions opt;
  opt.publish_wait_ms = 0;
  opt.device_attempts = 10;
  std::ostringstream out;
  const auto s = run_line(cfg, profile, opt, out);
  INFO(out.str());
  CHECK(s.publishing == 0);
  CHECK(s.halted.find("4013") != std::string::npos);
  std::ostringstream summary;
  print_summary(s, summary);
  CHECK(summary.str().find("line halted: 3 stored key sets in a row") != std::string::npos);
  CHECK(count(db, "SELECT count(*) FROM pool.device_key_quarantine") == 3);
  CHECK(count(db, "SELECT count(*) FROM pool.device_key") == 3);
  CHECK(count(db, "SELECT count(*) FROM pool.imei") == 8);  // every claim rolled back
}
