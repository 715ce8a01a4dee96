#include "keyline/backupdb/migrate.h"

#include <cstdlib>

#include "keyline/core/pq.h"

namespace keyline::backupdb {

std::vector<std::string> split_statements(const std::string& sql) {
  std::vector<std::string> out;
  std::string cur;
  bool in_quote = false, in_dollar = false;
  for (std::size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    if (!in_quote && !in_dollar && c == '-' && i + 1 < sql.size() && sql[i + 1] == '-') {
      while (i < sql.size() && sql[i] != '\n') ++i;  // a line comment ends at the newline
      cur += '\n';
      continue;
    }
    if (!in_dollar && c == '\'') in_quote = !in_quote;
    if (!in_quote && c == '$' && i + 1 < sql.size() && sql[i + 1] == '$') {
      in_dollar = !in_dollar;  // only the anonymous $$ tag is used in our migrations
      cur += "$$";
      ++i;
      continue;
    }
    if (!in_quote && !in_dollar && c == ';') {
      if (cur.find_first_not_of(" \t\r\n") != std::string::npos) out.push_back(cur);
      cur.clear();
      continue;
    }
    cur += c;
  }
  if (cur.find_first_not_of(" \t\r\n") != std::string::npos) out.push_back(cur);
  return out;
}

int migrate(const Config& config) {
  core::pq::Connection conn(config.db);
  conn.exec(
      "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, file text NOT NULL, "
      "applied_at timestamptz NOT NULL DEFAULT now())");
  int applied = 0;
  for (const auto& m : embedded_migrations()) {
    const int version = std::atoi(m.file);
    if (version <= 0) throw core::Error(errc::Migration, std::string("migration file without a number: ") + m.file);
    core::pq::Transaction tx(conn);
    // Serializes concurrent migrators (two servers started at once): the second waits, then skips.
    tx.exec("SELECT pg_advisory_xact_lock(hashtext('keyline_backupdb_migrate'))");
    if (!tx.exec("SELECT 1 FROM schema_migrations WHERE version = $1", {version}).empty()) continue;
    for (const auto& stmt : split_statements(m.sql)) {
      try {
        tx.exec(stmt);
      } catch (const core::DbError& e) {
        throw core::DbError(e.code(), std::string("migration ") + m.file + ": " + e.what(), e.sqlstate());
      }
    }
    tx.exec("INSERT INTO schema_migrations (version, file) VALUES ($1, $2)", {version, std::string(m.file)});
    tx.commit();
    ++applied;
  }
  if (!config.role_password.empty())
    conn.exec("SELECT keyline_backupdb_set_password($1)", {config.role_password});
  return applied;
}

}  // namespace keyline::backupdb
