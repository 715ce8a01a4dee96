#include "keyline/backupdb/migrate.h"

#include "keyline/core/pq.h"

namespace keyline::backupdb {

int migrate(const Config& config) {
  core::pq::Connection conn(config.db);
  const int applied = core::apply_migrations(conn, "schema_migrations", embedded_migrations());
  if (!config.role_password.empty())
    conn.exec("SELECT keyline_backupdb_set_password($1)", {config.role_password});
  return applied;
}

}  // namespace keyline::backupdb
