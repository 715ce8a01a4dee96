// Where integration tests find the per-run fixtures started by ctest (tests/CMakeLists.txt):
//   $KEYLINE_TESTENV/pg/   written by scripts/pg.sh:  conninfo (superuser), port, host
//   $KEYLINE_TESTENV/hsm/  written by scripts/hsm.sh: softhsm2.conf, module, so.pin, user.pin, label
#pragma once

#include <string>

namespace keyline::test {

std::string testenv_dir();               // $KEYLINE_TESTENV (throws when unset)
std::string source_dir();                // $KEYLINE_SOURCE_DIR
std::string binary_dir();                // $KEYLINE_BINARY_DIR
std::string read_file(const std::string& path);  // whole file, trailing newline stripped

struct PgEnv {
  std::string conninfo;  // superuser connection string to database "postgres"
  std::string host;
  int port = 0;
  // Creates a fresh database with a unique name and returns its superuser conninfo, so tests
  // sharing the cluster never see each other's tables.
  std::string create_database(const std::string& prefix) const;
};
PgEnv pg_env();

struct HsmEnv {
  std::string conf;    // SOFTHSM2_CONF path (also exported to the process by hsm_env())
  std::string module;  // PKCS#11 module path
  std::string label;   // token label
  std::string user_pin;
  std::string so_pin;
};
HsmEnv hsm_env();

// A free TCP port on 127.0.0.1 (bound and released; good enough for tests on one machine).
int free_port();

}  // namespace keyline::test
