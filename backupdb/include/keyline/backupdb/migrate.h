// Numbered SQL migrations (backupdb/migrations/NNNN_name.sql, compiled in), applied in order, each in
// its own transaction, recorded in schema_migrations; applying twice changes nothing.
#pragma once

#include <string>
#include <vector>

#include "keyline/backupdb/config.h"

namespace keyline::backupdb {

struct Migration {
  const char* file;  // "0001_records.sql"
  const char* sql;
};
const std::vector<Migration>& embedded_migrations();

// Splits a migration into statements at top-level semicolons (outside quotes, dollar-quoted bodies
// and comments), because PQexecParams runs one statement at a time.
std::vector<std::string> split_statements(const std::string& sql);

// Applies the pending migrations and, when role_password is set, gives the server role that
// password. Returns how many migrations were applied now. Throws DbError / Error(errc::Migration).
int migrate(const Config& config);

}  // namespace keyline::backupdb
