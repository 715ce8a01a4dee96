#include "keyline/core/pq.h"
#include "keyline/core/secret_input.h"
#include "keyline/service/service.h"

namespace keyline::service {

int migrate(const Config& config) {
  if (!config.db_password_file.empty())
    core::export_pgpassword(core::read_secret_file(config.db_password_file));
  core::pq::Connection conn(config.db);
  return core::apply_migrations(conn, "service_schema_migrations", embedded_migrations());
}

}  // namespace keyline::service
