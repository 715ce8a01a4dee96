#include "keyline/core/migrate.h"

#include <cstdlib>

#include "keyline/core/error.h"

namespace keyline::core {

std::vector<std::string> split_sql_statements(const std::string& sql) {
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
      in_dollar = !in_dollar;  // only the anonymous $$ tag is used in keyline's migrations
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

int apply_migrations(pq::Connection& conn, const std::string& table, const std::vector<Migration>& migrations) {
  for (char c : table)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.'))
      throw ConfigError(ErrorCode::Config, "bad migration table name");
  // Identifiers cannot be parameters; the name is a compile-time constant checked above.
  conn.exec("CREATE TABLE IF NOT EXISTS " + table +
            " (version integer PRIMARY KEY, file text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
  int applied = 0;
  for (const auto& m : migrations) {
    const int version = std::atoi(m.file);
    if (version <= 0) throw DbError(ErrorCode::Db, std::string("migration file without a number: ") + m.file);
    pq::Transaction tx(conn);
    // Serializes concurrent migrators (two programs started at once): the second waits, then skips.
    tx.exec("SELECT pg_advisory_xact_lock(hashtext($1))", {table});
    if (!tx.exec("SELECT 1 FROM " + table + " WHERE version = $1", {version}).empty()) continue;
    for (const auto& stmt : split_sql_statements(m.sql)) {
      try {
        tx.exec(stmt);
      } catch (const DbError& e) {
        throw DbError(e.code(), std::string("migration ") + m.file + ": " + e.what(), e.sqlstate());
      }
    }
    tx.exec("INSERT INTO " + table + " (version, file) VALUES ($1, $2)", {version, std::string(m.file)});
    tx.commit();
    ++applied;
  }
  return applied;
}

}  // namespace keyline::core
