// keyline-backupdb: parses options and calls the library (backupdb/include/keyline/backupdb/).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "keyline/backupdb/log.h"
#include "keyline/backupdb/migrate.h"
#include "keyline/backupdb/monitor.h"
#include "keyline/backupdb/server.h"
#include "keyline/backupdb/witness.h"
#include "keyline/core/config_file.h"
#include "keyline/core/error.h"
#include "keyline/core/guard.h"
#include "keyline/core/secret_input.h"

using keyline::backupdb::Config;

namespace {

void add_db_options(CLI::App* cmd, Config& cfg, const char* what) {
  cmd->add_option("--db", cfg.db, std::string("libpq conninfo ") + what + ", without a password")
      ->envname("KEYLINE_BACKUPDB_DB")->required();
  cmd->add_option("--db-password-file", cfg.db_password_file, "the database password (else PGPASSWORD or PGPASSFILE)")
      ->envname("KEYLINE_BACKUPDB_DB_PASSWORD_FILE");
}

void add_server_limits(CLI::App* serve, Config& cfg) {
  serve->add_option("--threads", cfg.threads, "worker threads: requests handled at once (connections cost none)")
      ->envname("KEYLINE_BACKUPDB_THREADS")->capture_default_str();
  serve->add_option("--io-threads", cfg.io_threads, "epoll loops owning the connections and TLS handshakes")
      ->envname("KEYLINE_BACKUPDB_IO_THREADS")->capture_default_str();
  serve->add_option("--max-connections", cfg.max_connections, "open connections in total (idle ones closed first)")
      ->envname("KEYLINE_BACKUPDB_MAX_CONNECTIONS")->capture_default_str();
  serve->add_option("--max-per-client", cfg.max_per_client, "open connections per peer address")
      ->envname("KEYLINE_BACKUPDB_MAX_PER_CLIENT")->capture_default_str();
  serve->add_option("--max-queued", cfg.max_queued, "complete requests waiting for a worker (503 beyond)")
      ->envname("KEYLINE_BACKUPDB_MAX_QUEUED")->capture_default_str();
  serve->add_option("--handshake-timeout-ms", cfg.handshake_timeout_ms, "accept to TLS handshake done")
      ->envname("KEYLINE_BACKUPDB_HANDSHAKE_TIMEOUT_MS")->capture_default_str();
  serve->add_option("--head-timeout-ms", cfg.head_timeout_ms, "first byte of a request to the end of its head")
      ->envname("KEYLINE_BACKUPDB_HEAD_TIMEOUT_MS")->capture_default_str();
  serve->add_option("--body-timeout-ms", cfg.body_timeout_ms, "end of the head to the end of the body")
      ->envname("KEYLINE_BACKUPDB_BODY_TIMEOUT_MS")->capture_default_str();
  serve->add_option("--write-timeout-ms", cfg.write_timeout_ms, "a reply taken by the client")
      ->envname("KEYLINE_BACKUPDB_WRITE_TIMEOUT_MS")->capture_default_str();
  serve->add_option("--idle-timeout-ms", cfg.idle_timeout_ms, "keep-alive connection idle between requests")
      ->envname("KEYLINE_BACKUPDB_IDLE_TIMEOUT_MS")->capture_default_str();
  serve->add_option("--body-limit", cfg.body_limit, "largest accepted request body in bytes (413 beyond)")
      ->envname("KEYLINE_BACKUPDB_BODY_LIMIT")->capture_default_str();
}

// The log key's token (docs/transparency.md, "The public DB's log"), for serve and `log init|key`.
void add_log_key_options(CLI::App* cmd, keyline::backupdb::LogSettings& log) {
  cmd->add_option("--log-token-module", log.token_module, "PKCS#11 module of the token holding the log key")
      ->envname("KEYLINE_BACKUPDB_LOG_TOKEN_MODULE");
  cmd->add_option("--log-token-label", log.token_label, "label of that token")->envname("KEYLINE_BACKUPDB_LOG_TOKEN_LABEL");
  cmd->add_option("--log-token-pin-file", log.token_pin_file, "the token's user PIN (else KEYLINE_BACKUPDB_LOG_TOKEN_PIN)")
      ->envname("KEYLINE_BACKUPDB_LOG_TOKEN_PIN_FILE");
  cmd->add_option("--log-key-label", log.key_label, "label of the Ed25519 log key on the token")
      ->envname("KEYLINE_BACKUPDB_LOG_KEY_LABEL")->capture_default_str();
  cmd->add_option("--log-origin", log.origin, "the log's origin, also the key name (no spaces)")
      ->envname("KEYLINE_BACKUPDB_LOG_ORIGIN")->capture_default_str();
}

void add_log_serve_options(CLI::App* serve, keyline::backupdb::LogSettings& log) {
  add_log_key_options(serve, log);
  serve->add_flag("--no-log", log.disabled, "serve without the transparency log (records are still sequenced)")
      ->envname("KEYLINE_BACKUPDB_NO_LOG");
  serve->add_option("--log-batch", log.batch_entries, "a checkpoint once this many entries wait")
      ->envname("KEYLINE_BACKUPDB_LOG_BATCH")->capture_default_str();
  serve->add_option("--log-batch-ms", log.batch_ms, "... or this many milliseconds after the last one")
      ->envname("KEYLINE_BACKUPDB_LOG_BATCH_MS")->capture_default_str();
  serve->add_option("--witness", log.witnesses, "a C2SP tlog-witness URL to push each checkpoint to, repeatable");
  serve->add_option("--witness-ca", log.witness_ca, "CA of the witnesses' certificates (PEM)");
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  CLI::App app{"keyline-backupdb: the permanent public backup database (migrate | serve | log).\n"
               "Settings come from flags, KEYLINE_BACKUPDB_* environment variables or --config FILE (TOML).\n"
               "Passwords come from files or the environment, never from the command line.\n"
               "Exit codes: 0 ok, 1 failure, 2 usage/config, 3 bad input, 4 database unreachable."};
  keyline::core::config::set_strict_config(app);
  app.require_subcommand(1);

  auto* migrate = app.add_subcommand("migrate", "apply the numbered SQL migrations (idempotent)");
  add_db_options(migrate, cfg, "of the database owner");
  migrate->add_option("--role-password-file", cfg.role_password_file,
                      "file with the password for the keyline_backupdb server role (else KEYLINE_BACKUPDB_ROLE_PASSWORD)")
      ->envname("KEYLINE_BACKUPDB_ROLE_PASSWORD_FILE");
  std::string refused;  // kept only to refuse it with a reason
  migrate->add_option("--role-password", refused, "refused: use --role-password-file")->group("");

  auto* serve = app.add_subcommand("serve", "serve the HTTP API (HTTPS unless --plain-http)");
  add_db_options(serve, cfg, "as the keyline_backupdb role");
  serve->add_option("--listen", cfg.listen, "address:port of the public API")->envname("KEYLINE_BACKUPDB_LISTEN")->capture_default_str();
  serve->add_option("--ops-listen", cfg.ops_listen, "address:port of /metrics and /healthz (plain HTTP; port 0: any)")
      ->envname("KEYLINE_BACKUPDB_OPS_LISTEN")->capture_default_str();
  serve->add_option("--tls-cert", cfg.tls_cert, "server certificate chain (PEM)")->envname("KEYLINE_BACKUPDB_TLS_CERT");
  serve->add_option("--tls-key", cfg.tls_key, "server private key (PEM)")->envname("KEYLINE_BACKUPDB_TLS_KEY");
  serve->add_option("--station-ca", cfg.station_ca, "issuer(s) of the station certificates allowed to publish (PEM)")
      ->envname("KEYLINE_BACKUPDB_STATION_CA");
  serve->add_option("--station-deny", cfg.station_deny,
                    "station certificates that may no longer publish: SHA-256 fingerprints or issuer-serial lines "
                    "(re-read when the file changes)")
      ->envname("KEYLINE_BACKUPDB_STATION_DENY");
  serve->add_option("--trust", cfg.trust, "device root certificate(s) (PEM), repeatable")
      ->envname("KEYLINE_BACKUPDB_TRUST")->required();
  serve->add_option("--trusted-proxy", cfg.trusted_proxies, "peer address whose X-Forwarded-For names the client; repeatable")
      ->envname("KEYLINE_BACKUPDB_TRUSTED_PROXY");
  serve->add_flag("--plain-http", cfg.plain_http, "plain HTTP behind a TLS-terminating proxy (publishing disabled)")
      ->envname("KEYLINE_BACKUPDB_PLAIN_HTTP");
  add_server_limits(serve, cfg);
  serve->add_option("--replica", cfg.replicas.conninfos, "libpq conninfo of a streaming replica of --db that takes reads, repeatable")
      ->envname("KEYLINE_BACKUPDB_REPLICA");
  serve->add_option("--max-replica-lag-ms", cfg.replicas.max_lag_ms, "a replica further behind the primary is skipped")
      ->envname("KEYLINE_BACKUPDB_MAX_REPLICA_LAG_MS")->capture_default_str();
  serve->add_option("--replica-timeout-ms", cfg.replicas.timeout_ms,
                    "a replica read or check without an answer by then goes to the next node, the replica marked down")
      ->envname("KEYLINE_BACKUPDB_REPLICA_TIMEOUT_MS")->check(CLI::Range(1, 60000))->capture_default_str();
  serve->add_option("--db-pool", cfg.db_pool, "PostgreSQL connections")->envname("KEYLINE_BACKUPDB_DB_POOL")->capture_default_str();
  serve->add_option("--rate", cfg.rate, "requests per second per client (0 = no limit)")
      ->envname("KEYLINE_BACKUPDB_RATE")->capture_default_str();
  serve->add_option("--rate-clients", cfg.rate_clients, "clients whose rate is tracked (least recently seen dropped beyond)")
      ->envname("KEYLINE_BACKUPDB_RATE_CLIENTS")->capture_default_str();
  serve->add_option("--cache", cfg.cache_entries, "records kept in the in-process cache")
      ->envname("KEYLINE_BACKUPDB_CACHE")->capture_default_str();
  serve->add_option("--read-batch", cfg.read_batch, "cache misses that share one database round trip, at most (1: one each; more: req/s for p99)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  serve->add_flag("--preload", cfg.preload, "fill the cache (up to --cache records, newest first) before listening")
      ->envname("KEYLINE_BACKUPDB_PRELOAD");
  serve->add_option("--log", cfg.log, "request log: a path, stderr or off")->envname("KEYLINE_BACKUPDB_LOG")->capture_default_str();
  add_log_serve_options(serve, cfg.tlog);

  auto* log = app.add_subcommand("log", "the transparency log's key on the token (init | key)");
  log->require_subcommand(1);
  auto* log_init = log->add_subcommand("init", "generate the Ed25519 log key on the token; prints its verifier key");
  add_log_key_options(log_init, cfg.tlog);
  auto* log_key = log->add_subcommand("key", "print the log's verifier key (C2SP signed-note vkey) to pin");
  add_log_key_options(log_key, cfg.tlog);

  keyline::backupdb::MonitorConfig mcfg;
  auto* mon = app.add_subcommand("monitor", "follow a public DB's log: consistency, tree, entries, records (exit 0 clean, "
                                            "3 findings, 5 fork; one JSON line per finding on stdout)");
  mon->add_option("--url", mcfg.url, "the public DB or mirror")->required();
  mon->add_option("--ca", mcfg.ca, "CA of its server certificate (PEM)");
  mon->add_option("--log-key", mcfg.log_key, "the log's verifier key (vkey)");
  mon->add_option("--log-key-file", mcfg.log_key_file, "a file holding it");
  mon->add_option("--state", mcfg.state_dir, "directory of the verified tree and the entries seen")->required();
  mon->add_option("--trust", mcfg.trust, "manufacturer root certificate(s) (PEM), repeatable")->required();
  auto* once = mon->add_flag("--once", mcfg.once, "one pass");
  mon->add_flag("--recheck", mcfg.recheck, "each pass also fetches and checks the records of entries checked before");
  mon->add_option("--interval", mcfg.interval_s, "seconds between passes")->capture_default_str()->excludes(once);

  keyline::backupdb::WitnessConfig wcfg;
  auto* witness = app.add_subcommand("witness", "cosign checkpoints verified consistent (C2SP tlog-witness); init | key");
  witness->add_option("--log-key", wcfg.log_keys, "verifier key of a log to witness (vkey), repeatable");
  witness->add_option("--log-key-file", wcfg.log_key_files, "a file holding such a key, repeatable");
  witness->add_option("--witness-key-file", wcfg.key_file, "the witness's Ed25519 key (PRIVATE+KEY+..., mode 0600)")
      ->envname("KEYLINE_WITNESS_KEY_FILE");
  witness->add_option("--state", wcfg.state_dir, "directory of the last checkpoint cosigned per log");
  witness->add_option("--listen", wcfg.listen, "address:port")->capture_default_str();
  witness->add_option("--tls-cert", wcfg.tls_cert, "server certificate chain (PEM); plain HTTP without");
  witness->add_option("--tls-key", wcfg.tls_key, "server private key (PEM)");
  auto* witness_init = witness->add_subcommand("init", "create the witness key file (0600); prints its verifier key");
  witness_init->add_option("--witness-key-file", wcfg.key_file, "the key file to create")->required();
  witness_init->add_option("--name", wcfg.name, "the witness's name (a schema-less URL)")->required();
  auto* witness_key = witness->add_subcommand("key", "print the witness's verifier key (type 0x04) to pin");
  witness_key->add_option("--witness-key-file", wcfg.key_file, "the key file")->required();

  keyline::backupdb::PushConfig pcfg;
  auto* push = app.add_subcommand("witness-push", "have a witness cosign a public DB's latest checkpoint");
  push->add_option("--url", pcfg.db_url, "the public DB or mirror")->required();
  push->add_option("--ca", pcfg.db_ca, "CA of its server certificate (PEM)");
  push->add_option("--witness", pcfg.witness_url, "the witness's URL")->required();
  push->add_option("--witness-ca", pcfg.witness_ca, "CA of the witness's certificate (PEM)");
  push->add_option("--log-key", pcfg.log_key, "the log's verifier key (vkey)");
  push->add_option("--log-key-file", pcfg.log_key_file, "a file holding it");
  push->add_option("--out", pcfg.out, "where the cosigned checkpoint is written (default stdout)");

  try {
    keyline::core::config::refuse_secret_flags(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keyline::core::exit_code::usage;
  }
  return keyline::core::run_guarded("keyline-backupdb", [&] {
    keyline::core::refuse_password_on_command_line(argc, argv, "--role-password", false,
                                                   "--role-password-file or KEYLINE_BACKUPDB_ROLE_PASSWORD");
    keyline::core::refuse_password_on_command_line(argc, argv, "--db", true,
                                                   "--db-password-file, PGPASSWORD or PGPASSFILE");
    keyline::core::refuse_password_on_command_line(argc, argv, "--replica", true,
                                                   "--db-password-file, PGPASSWORD or PGPASSFILE");
    // From a config file the old key would otherwise be dropped without a word.
    if (!refused.empty())
      throw keyline::core::ConfigError(keyline::core::ErrorCode::Usage,
                                       "role-password is not a setting: use --role-password-file");
    if (*migrate) {
      const int n = keyline::backupdb::migrate(cfg);
      std::printf("keyline-backupdb: %d migration(s) applied\n", n);
      return 0;
    }
    if (*log_init) {
      std::printf("%s\n", keyline::backupdb::log_init(cfg.tlog).c_str());
      return 0;
    }
    if (*log_key) {
      std::printf("%s\n", keyline::backupdb::log_key(cfg.tlog).c_str());
      return 0;
    }
    if (*mon) return keyline::backupdb::monitor(mcfg);
    if (*witness_init) {
      std::printf("%s\n", keyline::backupdb::witness_init(wcfg).c_str());
      return 0;
    }
    if (*witness_key) {
      std::printf("%s\n", keyline::backupdb::witness_key(wcfg).c_str());
      return 0;
    }
    if (*witness) return keyline::backupdb::witness_serve(wcfg);
    if (*push) return keyline::backupdb::witness_push(pcfg);
    return keyline::backupdb::serve(cfg);
  });
}
