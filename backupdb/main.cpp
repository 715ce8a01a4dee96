// keyline-backupdb: parses options and calls the library (backupdb/include/keyline/backupdb/).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "keyline/backupdb/migrate.h"
#include "keyline/backupdb/server.h"
#include "keyline/core/error.h"
#include "keyline/core/guard.h"

using keyline::backupdb::Config;

int main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"keyline-backupdb: the permanent public backup database (migrate | serve).\n"
               "Settings come from flags, KEYLINE_BACKUPDB_* environment variables or --config FILE (TOML/INI).\n"
               "Exit codes: 0 ok, 1 failure, 2 usage/config, 3 bad input, 4 database unreachable."};
  app.set_config("--config", "", "config file (TOML or INI, keys = long option names)");
  app.require_subcommand(1);

  auto* migrate = app.add_subcommand("migrate", "apply the numbered SQL migrations (idempotent)");
  migrate->add_option("--db", cfg.db, "libpq conninfo of the database owner")->envname("KEYLINE_BACKUPDB_DB")->required();
  migrate->add_option("--role-password", cfg.role_password, "password for the keyline_backupdb server role")
      ->envname("KEYLINE_BACKUPDB_ROLE_PASSWORD");

  auto* serve = app.add_subcommand("serve", "serve the HTTP API (HTTPS unless --plain-http)");
  serve->add_option("--db", cfg.db, "libpq conninfo as the keyline_backupdb role")->envname("KEYLINE_BACKUPDB_DB")->required();
  serve->add_option("--listen", cfg.listen, "address:port")->envname("KEYLINE_BACKUPDB_LISTEN")->capture_default_str();
  serve->add_option("--tls-cert", cfg.tls_cert, "server certificate chain (PEM)")->envname("KEYLINE_BACKUPDB_TLS_CERT");
  serve->add_option("--tls-key", cfg.tls_key, "server private key (PEM)")->envname("KEYLINE_BACKUPDB_TLS_KEY");
  serve->add_option("--client-ca", cfg.client_ca, "station CA (PEM): issuer of publishing clients")
      ->envname("KEYLINE_BACKUPDB_CLIENT_CA");
  serve->add_option("--trust", cfg.trust, "device root certificate(s) (PEM), repeatable")
      ->envname("KEYLINE_BACKUPDB_TRUST")->required();
  serve->add_flag("--plain-http", cfg.plain_http, "plain HTTP behind a TLS-terminating proxy (publishing disabled)")
      ->envname("KEYLINE_BACKUPDB_PLAIN_HTTP");
  serve->add_option("--threads", cfg.threads, "worker threads = keep-alive connections served at once")
      ->envname("KEYLINE_BACKUPDB_THREADS")->capture_default_str();
  serve->add_option("--max-connections", cfg.max_connections, "accepted connections waiting for a thread")
      ->envname("KEYLINE_BACKUPDB_MAX_CONNECTIONS")->capture_default_str();
  serve->add_option("--db-pool", cfg.db_pool, "PostgreSQL connections")->envname("KEYLINE_BACKUPDB_DB_POOL")->capture_default_str();
  serve->add_option("--body-limit", cfg.body_limit, "largest accepted request body in bytes")
      ->envname("KEYLINE_BACKUPDB_BODY_LIMIT")->capture_default_str();
  serve->add_option("--rate", cfg.rate, "requests per second per client (0 = no limit)")
      ->envname("KEYLINE_BACKUPDB_RATE")->capture_default_str();
  serve->add_option("--cache", cfg.cache_entries, "records kept in the in-process cache")
      ->envname("KEYLINE_BACKUPDB_CACHE")->capture_default_str();
  serve->add_flag("--preload", cfg.preload, "fill the cache (up to --cache records, newest first) before listening")
      ->envname("KEYLINE_BACKUPDB_PRELOAD");
  serve->add_option("--log", cfg.log, "request log: a path, stderr or off")->envname("KEYLINE_BACKUPDB_LOG")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keyline::core::exit_code::usage;
  }
  return keyline::core::run_guarded("keyline-backupdb", [&] {
    if (*migrate) {
      const int n = keyline::backupdb::migrate(cfg);
      std::printf("keyline-backupdb: %d migration(s) applied\n", n);
      return 0;
    }
    return keyline::backupdb::serve(cfg);
  });
}
