// Numbered SQL migrations (NNNN_name.sql, compiled into each program by keyline_embed_migrations in
// cmake/KeylineMigrations.cmake), applied in order, each in its own transaction, recorded in a
// per-part table; applying twice changes nothing. Shared by the public DB, the station and the KPS.
#pragma once

#include <string>
#include <vector>

#include "keyline/core/pq.h"

namespace keyline::core {

struct Migration {
  const char* file;  // "0001_records.sql"
  const char* sql;
};

// Splits a migration into statements at top-level semicolons (outside quotes, $$ bodies and
// comments), because PQexecParams runs one statement at a time.
std::vector<std::string> split_sql_statements(const std::string& sql);

// Applies the migrations not yet recorded in `table` (created when absent). Concurrent migrators
// serialize on an advisory lock named after the table. Returns how many were applied now.
// Throws DbError naming the migration file.
int apply_migrations(pq::Connection& conn, const std::string& table, const std::vector<Migration>& migrations);

}  // namespace keyline::core
