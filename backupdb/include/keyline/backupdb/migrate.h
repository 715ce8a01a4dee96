// Numbered SQL migrations (backupdb/migrations/NNNN_name.sql, compiled in by keyline_embed_migrations),
// applied in order by core::apply_migrations, each in its own transaction, recorded in
// schema_migrations; applying twice changes nothing.
#pragma once

#include <vector>

#include "keyline/backupdb/config.h"
#include "keyline/core/migrate.h"

namespace keyline::backupdb {

const std::vector<core::Migration>& embedded_migrations();

// Applies the pending migrations and, when role_password is set, gives the server role that
// password. Returns how many migrations were applied now. Throws DbError.
int migrate(const Config& config);

}  // namespace keyline::backupdb
