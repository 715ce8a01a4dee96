#include "keyline/backupdb/migrate.h"

#include "keyline/core/pq.h"
#include "keyline/core/secret_input.h"

namespace keyline::backupdb {

int migrate(const Config& config) {
  const auto password = !config.role_password.empty()
                            ? config.role_password
                            : core::read_secret(config.role_password_file, "KEYLINE_BACKUPDB_ROLE_PASSWORD");
  if (!config.db_password_file.empty()) core::export_pgpassword(core::read_secret_file(config.db_password_file));
  core::pq::Connection conn(config.db);
  const int applied = core::apply_migrations(conn, "schema_migrations", embedded_migrations());
  // The statement parameter is the one copy outside secure memory libpq needs; it lives for one call.
  if (!password.empty())
    conn.exec("SELECT keyline_backupdb_set_password($1)", {std::string(password.begin(), password.end())});
  return applied;
}

}  // namespace keyline::backupdb
