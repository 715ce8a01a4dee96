// The partition tests' database: made on the fixture cluster and migrated by the library as
// `keyline-backupdb migrate` does, and the server's role on it, as serve connects. The role is
// cluster-wide, so its password is integration_backupdb's.
#pragma once

#include <cstring>
#include <string>

#include "keyline/backupdb/migrate.h"
#include "testenv.h"

namespace keyline::partition_db {

inline constexpr const char* kRolePassword = "kl-test-role-pw";

inline std::string migrated_db(const std::string& prefix) {
  const auto db = test::pg_env().create_database(prefix);
  backupdb::Config cfg;
  cfg.db = db;
  cfg.role_password.assign(kRolePassword, kRolePassword + std::strlen(kRolePassword));
  backupdb::migrate(cfg);
  return db;
}

inline std::string role_of(const std::string& owner) {
  const auto env = test::pg_env();
  const auto at = owner.find("dbname=");
  const auto name = owner.substr(at + 7, owner.find(' ', at) - at - 7);
  return "host=" + env.host + " port=" + std::to_string(env.port) + " user=keyline_backupdb password=" + kRolePassword +
         " dbname=" + name + " connect_timeout=5";
}

}  // namespace keyline::partition_db
