// Fixtures of the station tests (flow, key sources, pool and claims: tests/integration/station) and of
// the line engine's (tests/integration/line): a station database, the fixture token's station keys and
// a fleet of emulated devices served by the real keyline-device program.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "keyline/core/error.h"
#include "keyline/core/pq.h"
#include "keyline/station/config.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"
#include "keyline/station/pool.h"
#include "testenv.h"

namespace keyline::station::test_fixture {

// A fresh station database with the station's migrations applied.
inline core::pq::Connection fresh_station_db(const char* prefix, std::string* conninfo = nullptr) {
  const std::string ci = test::pg_env().create_database(prefix);
  if (conninfo) *conninfo = ci;
  core::pq::Connection c(ci);
  migrate_station_db(c);
  return c;
}

inline std::int64_t count(core::pq::Connection& c, const std::string& sql, const core::pq::Params& p = {}) {
  return c.exec(sql, p).int64(0, 0);
}

// Station `station_id` on the fixture token with the station's keys, made once per ctest run (the token
// lives as long as the run; the PKI directory is rewritten by the run that creates the keys). A test
// process asks once and keeps the answer (station_config()).
inline StationConfig fixture_station_config(const std::string& station_id) {
  StationConfig cfg;
  const auto hsm = test::hsm_env();
  cfg.hsm_module = hsm.module;
  cfg.token_label = hsm.label;
  cfg.pin_file = test::testenv_dir() + "/hsm/user.pin";
  cfg.channel = "plain";  // fixture devices are made without a chip vendor
  cfg.pki_dir = test::testenv_dir() + "/station-pki";
  cfg.station_id = station_id;
  complete_config(cfg, "");
  std::ostringstream out;
  try {
    keys_init(cfg, KeysInitOptions{}, out);
  } catch (const core::Error& e) {
    if (e.code() != errc::KeysExist) throw;
  }
  return cfg;
}

// The flow and key-source tests' station.
inline StationConfig station_config() {
  static const StationConfig cfg = fixture_station_config("itest-flow");
  return cfg;
}

// Emulated devices of one `keyline-device serve --fleet` process (extra: more serve options).
class Fleet {
 public:
  Fleet(int n, const std::string& rom_ca, const std::string& extra = {}) {
    namespace fs = std::filesystem;
    static int seq = 0;
    m_dir = test::testenv_dir() + "/fleet-" + std::to_string(::getpid()) + "-" + std::to_string(++seq);
    fs::remove_all(m_dir);
    const std::string bin = test::binary_dir() + "/bin/keyline-device";
    const std::string make = bin + " make --dir '" + m_dir + "' --count " + std::to_string(n) + " --rom-ca '" +
                             rom_ca + "' > '" + m_dir + ".make.log' 2>&1";
    REQUIRE(std::system(make.c_str()) == 0);
    const std::string out = fleet_file();
    // Port 0: each device gets its own port from the kernel (a run of consecutive free ports is luck).
    const std::string serve = bin + " serve --quiet " + extra + " --fleet '" + m_dir + "' --listen 127.0.0.1:0 > '" +
                              out + "' 2> '" + m_dir + ".serve.err' & echo $! > '" + m_dir + ".pid'";
    REQUIRE(std::system(serve.c_str()) == 0);
    m_pid = std::stoi(test::read_file(m_dir + ".pid"));
    for (int i = 0; i < 200 && static_cast<int>(m_endpoints.size()) < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      m_endpoints.clear();
      std::ifstream in(out);
      std::string word, addr, chip, dir;
      while (in >> word >> addr >> chip >> dir)
        if (word == "listening") m_endpoints.push_back(addr);
    }
    // A throwing constructor runs no destructor: stop the server here before failing.
    if (static_cast<int>(m_endpoints.size()) != n) ::kill(m_pid, SIGTERM);
    REQUIRE(static_cast<int>(m_endpoints.size()) == n);
  }
  ~Fleet() {
    if (m_pid > 0) ::kill(m_pid, SIGTERM);
  }
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;
  const std::vector<std::string>& endpoints() const { return m_endpoints; }
  // What the server printed: its "listening" lines are a fleet file (station/line.h read_fleet_file).
  std::string fleet_file() const { return m_dir + ".serve.out"; }

 private:
  std::string m_dir;
  int m_pid = 0;
  std::vector<std::string> m_endpoints;
};

}  // namespace keyline::station::test_fixture
