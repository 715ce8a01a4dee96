// keyline-kps: parses options and calls the library (kps/include/keyline/kps/).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "keyline/core/config_file.h"
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

void add_sign_key(CLI::App* app, keyline::kps::SignKeySettings& s) {
  app->add_option("--sign-module", s.module, "PKCS#11 module of the KPS signing key")->envname("KEYLINE_KPS_SIGN_MODULE");
  app->add_option("--sign-token-label", s.token_label, "token holding the KPS signing key (answers are signed with it)")
      ->envname("KEYLINE_KPS_SIGN_TOKEN_LABEL");
  app->add_option("--sign-key-label", s.key_label, "label of the EC P-256 signing key")
      ->envname("KEYLINE_KPS_SIGN_KEY_LABEL")->capture_default_str();
  app->add_option("--sign-pin-file", s.pin_file, "the token user PIN (else KEYLINE_KPS_SIGN_PIN)")
      ->envname("KEYLINE_KPS_SIGN_PIN_FILE");
}

void add_db(CLI::App* app, keyline::kps::Config& cfg) {
  app->add_option("--db", cfg.db, "libpq conninfo, without a password")->envname("KEYLINE_KPS_DB")->required();
  app->add_option("--db-password-file", cfg.db_password_file, "the database password (else PGPASSWORD or PGPASSFILE)")
      ->envname("KEYLINE_KPS_DB_PASSWORD_FILE");
}

}  // namespace

int main(int argc, char** argv) {
  keyline::kps::Config cfg;
  CLI::App app{"keyline-kps: key provisioning server, asynchronous device-to-device key transfer (migrate | serve | account | device | sign-key).\n"
               "It relays keys sealed (HPKE) to the target device's transport key and never holds a key that opens them.\n"
               "Settings come from flags, KEYLINE_KPS_* environment variables or --config FILE (TOML).\n"
               "Passwords come from files or the environment, never from the command line.\n"
               "See docs/kps.md for the API, the device authentication and the policy file."};
  keyline::core::config::set_strict_config(app);
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
  serve->add_option("--allow", cfg.allow, "SOURCE:TARGET:LABELGLOB: an allow rule (chip IDs or *, a label glob); repeatable");
  serve->add_option("--backupdb", cfg.backupdb, "public DB base URL: the targets' transport certificates come from their records")
      ->envname("KEYLINE_KPS_BACKUPDB");
  serve->add_option("--backupdb-ca", cfg.backupdb_ca, "CA file of the public DB's TLS certificate")->envname("KEYLINE_KPS_BACKUPDB_CA");
  serve->add_option("--webhook-ca", cfg.webhook_ca, "CA file for webhook receivers (without it, webhooks are not sent)")
      ->envname("KEYLINE_KPS_WEBHOOK_CA");
  serve->add_option("--webhook-tries", cfg.webhook_tries, "webhook attempts before a notice is dead-lettered")
      ->envname("KEYLINE_KPS_WEBHOOK_TRIES")->capture_default_str();
  serve->add_option("--transfer-ttl", cfg.transfer_ttl, "seconds a transfer lives (60..2592000)")
      ->envname("KEYLINE_KPS_TRANSFER_TTL")->capture_default_str();
  serve->add_option("--purge-interval-s", cfg.purge_interval_s, "seconds between purge passes (1..60)")
      ->envname("KEYLINE_KPS_PURGE_INTERVAL_S")->capture_default_str();
  serve->add_option("--max-waiters", cfg.max_waiters, "long polls held at once (0: half of --threads)")
      ->envname("KEYLINE_KPS_MAX_WAITERS")->capture_default_str();
  serve->add_option("--clock-offset-s", cfg.clock_offset_s, "TEST ONLY: shift the KPS's clock by this many seconds")
      ->envname("KEYLINE_KPS_CLOCK_OFFSET");
  add_sign_key(serve, cfg.sign);
  add_server_limits(serve, cfg);
  serve->add_option("--db-pool", cfg.db_pool, "PostgreSQL connections")->envname("KEYLINE_KPS_DB_POOL")->capture_default_str();
  serve->add_option("--max-skew", cfg.max_skew, "seconds of clock skew accepted on signed requests")
      ->envname("KEYLINE_KPS_MAX_SKEW")->capture_default_str();
  serve->add_option("--rate", cfg.rate, "requests per second per client address (0 = no limit; 429 beyond)")
      ->envname("KEYLINE_KPS_RATE")->capture_default_str();
  serve->add_option("--burst", cfg.burst, "requests a client may send at once before --rate applies (0: max(rate, 1))")
      ->envname("KEYLINE_KPS_BURST")->capture_default_str();
  serve->add_option("--rate-clients", cfg.rate_clients, "clients whose rate is tracked (least recently seen dropped beyond)")
      ->envname("KEYLINE_KPS_RATE_CLIENTS")->capture_default_str();
  serve->add_option("--log", cfg.log, "request log: a path, stderr or off")->envname("KEYLINE_KPS_LOG")->capture_default_str();

  std::string name, chip, out;
  std::vector<std::string> devices, remove_devices;
  auto* account = app.add_subcommand("account", "owner accounts: add, devices, remove")->require_subcommand(1);
  auto* account_add = account->add_subcommand("add", "create an account; prints its token once (stored hashed)");
  add_db(account_add, cfg);
  account_add->add_option("--name", name, "account name")->required();
  account_add->add_option("--device", devices, "chip ID the account owns; repeatable");
  auto* account_dev = account->add_subcommand("devices", "add or remove owned devices");
  add_db(account_dev, cfg);
  account_dev->add_option("--name", name, "account name")->required();
  account_dev->add_option("--add", devices, "chip ID to add; repeatable");
  account_dev->add_option("--remove", remove_devices, "chip ID to remove; repeatable");
  auto* account_rm = account->add_subcommand("remove", "revoke the account's token and drop its devices");
  add_db(account_rm, cfg);
  account_rm->add_option("--name", name, "account name")->required();
  auto* device = app.add_subcommand("device", "registry of devices")->require_subcommand(1);
  auto* device_rm = device->add_subcommand("remove", "purge the chip's open transfers, notices, webhook and ownership");
  add_db(device_rm, cfg);
  device_rm->add_option("chip", chip, "chip ID")->required();
  auto* sign_key = app.add_subcommand("sign-key", "the KPS answer-signing key")->require_subcommand(1);
  auto* sign_init = sign_key->add_subcommand("init", "generate (or find) the key on the token; write its public key");
  add_sign_key(sign_init, cfg.sign);
  sign_init->add_option("--out", out, "public key file (PEM) devices pin with --kps-key")->required();

  try {
    keyline::core::config::refuse_secret_flags(argc, argv);
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
    if (*account_add) {
      const auto token = keyline::kps::account_add(cfg, name, devices);
      std::fwrite(token.data(), 1, token.size(), stdout);
      std::fputc('\n', stdout);
      return 0;
    }
    if (*account_dev) {
      keyline::kps::account_devices(cfg, name, devices, remove_devices);
      return 0;
    }
    if (*account_rm) {
      keyline::kps::account_remove(cfg, name);
      return 0;
    }
    if (*device_rm) {
      std::printf("keyline-kps: %d transfer(s) purged\n", keyline::kps::device_remove(cfg, chip));
      return 0;
    }
    if (*sign_init) {
      std::printf("keyline-kps: signing key %s written to %s\n", keyline::kps::sign_key_init(cfg.sign, out).c_str(),
                  out.c_str());
      return 0;
    }
    return keyline::kps::serve(cfg);
  });
}
