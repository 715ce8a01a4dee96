// keyline-kps: parses options and calls the library (kps/include/keyline/kps/).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "keyline/core/error.h"
#include "keyline/core/guard.h"
#include "keyline/kps/kps.h"

int main(int argc, char** argv) {
  keyline::kps::Config cfg;
  CLI::App app{"keyline-kps: key provisioning server, asynchronous device-to-device key transfer (migrate | serve).\n"
               "It relays keys sealed (HPKE) to the target device's transport key and never holds a key that opens them.\n"
               "Settings come from flags, KEYLINE_KPS_* environment variables or --config FILE (TOML/INI).\n"
               "See docs/kps.md for the API, the device authentication and the policy file."};
  app.set_config("--config", "", "config file (TOML or INI, keys = long option names)");
  app.require_subcommand(1);
  app.footer("Exit codes: 0 ok, 1 failure, 2 usage/config, 3 bad input, 4 database unreachable.");

  auto* migrate = app.add_subcommand("migrate", "apply the numbered SQL migrations (idempotent)");
  migrate->add_option("--db", cfg.db, "libpq conninfo of the database owner")->envname("KEYLINE_KPS_DB")->required();

  auto* serve = app.add_subcommand("serve", "serve the HTTPS API until SIGINT/SIGTERM");
  serve->add_option("--db", cfg.db, "libpq conninfo")->envname("KEYLINE_KPS_DB")->required();
  serve->add_option("--listen", cfg.listen, "address:port")->envname("KEYLINE_KPS_LISTEN")->capture_default_str();
  serve->add_option("--tls-cert", cfg.tls_cert, "server certificate chain (PEM)")->envname("KEYLINE_KPS_TLS_CERT")->required();
  serve->add_option("--tls-key", cfg.tls_key, "server private key (PEM)")->envname("KEYLINE_KPS_TLS_KEY")->required();
  serve->add_option("--trust", cfg.trust, "manufacturer root certificate(s) (PEM) that device identity chains end in")
      ->envname("KEYLINE_KPS_TRUST")->required();
  serve->add_option("--policy", cfg.policy, "access-control policy file (request/deliver/allow/group rules)")
      ->envname("KEYLINE_KPS_POLICY");
  serve->add_option("--allow", cfg.allow, "SOURCE:TARGET chip IDs (or *) allowed to transfer; repeatable");
  serve->add_option("--threads", cfg.threads, "worker threads")->envname("KEYLINE_KPS_THREADS")->capture_default_str();
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
    if (*migrate) {
      const int n = keyline::kps::migrate(cfg);
      std::printf("keyline-kps: %d migration(s) applied\n", n);
      return 0;
    }
    return keyline::kps::serve(cfg);
  });
}
