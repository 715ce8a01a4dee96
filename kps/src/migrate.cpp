#include "keyline/core/pq.h"
#include "keyline/kps/kps.h"

namespace keyline::kps {

int migrate(const Config& config) {
  core::pq::Connection conn(config.db);
  return core::apply_migrations(conn, "kps_schema_migrations", embedded_migrations());
}

}  // namespace keyline::kps
