// keyline-kps: parses options and calls the library (kps/include/keyline/kps/).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "keyline/core/error.h"
#include "keyline/core/guard.h"
#include "keyline/core/secret_input.h"
#include "keyline/kps/kps.h"

namespace {

void add_server_limits(CLI::App* serve, keyline::kps::Config& cfg) {
  serve->add_option("--threads", cfg.threads, "worker threads: requests handled at once (connections cost none)")
      ->envname("KEYLINE_KPS_THREADS")->capture_default_str();
  serve->add_option("--io-threads", cfg.io_threads, "epoll loops owning the connections and TLS handshakes")
      ->envname("KEYLINE_KPS_IO_THREADS")->capture_default_str();
  serve->add_option("--max-connections", cfg.max_connections, "open connections in total (idle ones closed first)")
      ->envname("KEYLINE_KPS_MAX_CONNECTIONS")->capture_default_str();
  serve->add_option("--max-per-client", cfg.max_per_client, "open connections per peer address")
      ->envname("KEYLINE_KPS_MAX_PER_CLIENT")->capture_default_str();
  serve->add_option("--max-queued", cfg.max_queued, "complete requests waiting for a worker (503 beyond)")
      ->envname("KEYLINE_KPS_MAX_QUEUED")->capture_default_str();
  serve->add_option("--handshake-timeout-ms", cfg.handshake_timeout_ms, "accept to TLS handshake done")
      ->envname("KEYLINE_KPS_HANDSHAKE_TIMEOUT_MS")->capture_default_str();
  serve->add_option("--head-timeout-ms", cfg.head_timeout_ms, "first byte of a request to the end of its head")
      ->envname("KEYLINE_KPS_HEAD_TIMEOUT_MS")->capture_default_str();
  serve->add_option("--body-timeout-ms", cfg.body_timeout_ms, "end of the head to the end of the body")
      ->envname("KEYLINE_KPS_BODY_TIMEOUT_MS")->capture_default_str();
  serve->add_option("--write-timeout-ms", cfg.write_timeout_ms, "a reply taken by the client")
      ->envname("KEYLINE_KPS_WRITE_TIMEOUT_MS")->capture_default_str();
  serve->add_option("--idle-timeout-ms", cfg.idle_timeout_ms, "keep-alive connection idle between requests")
      ->envname("KEYLINE_KPS_IDLE_TIMEOUT_MS")->capture_default_str();
  serve->add_option("--body-limit", cfg.body_limit, "largest accepted request body in bytes (413 beyond)")
      ->envname("KEYLINE_KPS_BODY_LIMIT")->capture_default_str();
}

}  // namespace

int main(int argc, char** argv) {
  keyline::kps::Config cfg;
  CLI::App app{"keyline-kps: key provisioning server, asynchronous device-to-device key transfer (migrate | serve).\n"
               "It relays keys sealed (HPKE) to the target device's transport key and never holds a key that opens them.\n"
               "Settings come from flags, KEYLINE_KPS_* environment variables or --config FILE (TOML/INI).\n"
               "Passwords come from files or the environment, never from the command line.\n"
               "See docs/kps.md for the API, the device authentication and the policy file."};
  app.set_config("--config", "", "config file (TOML or INI, keys = long option names)");
  app.require_subcommand(1);
  app.footer("Exit codes: 0 ok, 1 failure, 2 usage/config, 3 bad input, 4 database unreachable.");

  auto* migrate = app.add_subcommand("migrate", "apply the numbered SQL migrations (idempotent)");
  migrate->add_option("--db", cfg.db, "libpq conninfo of the database owner, without a password")
      ->envname("KEYLINE_KPS_DB")->required();
  migrate->add_option("--db-password-file", cfg.db_password_file, "the database password (else PGPASSWORD or PGPASSFILE)")
      ->envname("KEYLINE_KPS_DB_PASSWORD_FILE");

  auto* serve = app.add_subcommand("serve", "serve the HTTPS API until SIGINT/SIGTERM");
  serve->add_option("--db", cfg.db, "libpq conninfo, without a password")->envname("KEYLINE_KPS_DB")->required();
  serve->add_option("--db-password-file", cfg.db_password_file, "the database password (else PGPASSWORD or PGPASSFILE)")
      ->envname("KEYLINE_KPS_DB_PASSWORD_FILE");
  serve->add_option("--listen", cfg.listen, "address:port of the API")->envname("KEYLINE_KPS_LISTEN")->capture_default_str();
  serve->add_option("--ops-listen", cfg.ops_listen, "address:port of /metrics and /healthz (plain HTTP; port 0: any)")
      ->envname("KEYLINE_KPS_OPS_LISTEN")->capture_default_str();
  serve->add_option("--trusted-proxy", cfg.trusted_proxies, "peer address whose X-Forwarded-For names the client; repeatable")
      ->envname("KEYLINE_KPS_TRUSTED_PROXY");
  serve->add_option("--tls-cert", cfg.tls_cert, "server certificate chain (PEM)")->envname("KEYLINE_KPS_TLS_CERT")->required();
  serve->add_option("--tls-key", cfg.tls_key, "server private key (PEM)")->envname("KEYLINE_KPS_TLS_KEY")->required();
  serve->add_option("--trust", cfg.trust, "manufacturer root certificate(s) (PEM) that device identity chains end in")
      ->envname("KEYLINE_KPS_TRUST")->required();
  serve->add_option("--policy", cfg.policy, "access-control policy file (request/deliver/allow/group rules)")
      ->envname("KEYLINE_KPS_POLICY");
  serve->add_option("--allow", cfg.allow, "SOURCE:TARGET chip IDs (or *) allowed to transfer; repeatable");
  add_server_limits(serve, cfg);
  serve->add_option("--db-pool", cfg.db_pool, "PostgreSQL connections")->envname("KEYLINE_KPS_DB_POOL")->capture_default_str();
  serve->add_option("--max-skew", cfg.max_skew, "seconds of clock skew accepted on signed requests")
      ->envname("KEYLINE_KPS_MAX_SKEW")->capture_default_str();
  serve->add_option("--log", cfg.log, "request log: a path, stderr or off")->envname("KEYLINE_KPS_LOG")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keyline::core::exit_code::usage;
  }
  return keyline::core::run_guarded("keyline-kps", [&] {
    keyline::core::refuse_password_on_command_line(argc, argv, "--db", true,
                                                   "--db-password-file, PGPASSWORD or PGPASSFILE");
    if (*migrate) {
      const int n = keyline::kps::migrate(cfg);
      std::printf("keyline-kps: %d migration(s) applied\n", n);
      return 0;
    }
    return keyline::kps::serve(cfg);
  });
}
