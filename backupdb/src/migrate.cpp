#include "keyline/backupdb/migrate.h"

#include <chrono>
#include <thread>

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
  // The server reads a chip ID's partition of records by its name (pg_partition_hash.h), and SELECT on
  // the parent (0005) does not extend to that. The same rows, so no more than the role may read now;
  // granted here on every migrate, for whatever partitions the catalog has, instead of in a migration.
  conn.exec(
      "DO $$ DECLARE p regclass; BEGIN "
      "FOR p IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = to_regclass('records') LOOP "
      "EXECUTE format('GRANT SELECT ON %s TO keyline_backupdb', p); END LOOP; END $$");
  // The statement parameter is the one copy outside secure memory libpq needs; it lives for one call.
  // The role is cluster-wide: two databases of one cluster migrated at once (two public DBs, the test
  // suite) update its catalog row concurrently, and PostgreSQL answers XX000 "tuple concurrently
  // updated" to the second instead of waiting. The statement is idempotent, so it is simply run again.
  if (!password.empty()) {
    const std::string pw(password.begin(), password.end());
    for (int attempt = 1;; ++attempt) {
      try {
        conn.exec("SELECT keyline_backupdb_set_password($1)", {pw});
        break;
      } catch (const core::DbError& e) {
        if (e.sqlstate() != "XX000" || attempt == 5) throw;
        std::this_thread::sleep_for(std::chrono::milliseconds(20 * attempt));
      }
    }
  }
  return applied;
}

}  // namespace keyline::backupdb
