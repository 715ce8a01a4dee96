// keyline-service: parses options and calls the library (service/include/keyline/service/).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "keyline/core/config_file.h"
#include "keyline/core/error.h"
#include "keyline/core/guard.h"
#include "keyline/core/secret_input.h"
#include "keyline/service/service.h"

namespace {

using keyline::service::Config;

void add_db(CLI::App* cmd, Config& cfg) {
  cmd->add_option("--db", cfg.db, "libpq conninfo of the service DB, without a password")
      ->envname("KEYLINE_SERVICE_DB")
      ->required();
  cmd->add_option("--db-password-file", cfg.db_password_file,
                  "the database password (else PGPASSWORD or PGPASSFILE)")
      ->envname("KEYLINE_SERVICE_DB_PASSWORD_FILE");
}

void add_token(CLI::App* cmd, keyline::service::TokenConfig& t) {
  cmd->add_option("--pkcs11-module", t.module, "PKCS#11 module of the service token")
      ->envname("KEYLINE_SERVICE_PKCS11_MODULE")
      ->required();
  cmd->add_option("--token-label", t.label, "the service token's label")
      ->envname("KEYLINE_SERVICE_TOKEN_LABEL")
      ->required();
  cmd->add_option("--pin-file", t.pin_file, "the token's user PIN (else KEYLINE_SERVICE_PIN)")
      ->envname("KEYLINE_SERVICE_PIN_FILE");
}

void add_serve(CLI::App* serve, Config& cfg) {
  add_db(serve, cfg);
  add_token(serve, cfg.token);
  serve
      ->add_option("--master-label", cfg.token.master_label,
                   "label of master version 1; version N is LABEL-vN")
      ->envname("KEYLINE_SERVICE_MASTER_LABEL")
      ->capture_default_str();
  serve->add_option("--public-db", cfg.public_db, "https URL of the public backup DB")
      ->envname("KEYLINE_SERVICE_PUBLIC_DB")
      ->required();
  serve->add_option("--public-db-ca", cfg.public_db_ca, "CA of the public DB's TLS certificate (PEM)")
      ->envname("KEYLINE_SERVICE_PUBLIC_DB_CA");
  serve->add_option("--trust", cfg.trust, "manufacturer root(s) (PEM) device records chain to; repeatable")
      ->envname("KEYLINE_SERVICE_TRUST")
      ->required();
  serve->add_option("--listen", cfg.listen, "address:port of the device API")
      ->envname("KEYLINE_SERVICE_LISTEN")
      ->capture_default_str();
  serve
      ->add_option("--ops-listen", cfg.ops_listen,
                   "address:port of /metrics and /healthz (plain HTTP; port 0: any)")
      ->envname("KEYLINE_SERVICE_OPS_LISTEN")
      ->capture_default_str();
  serve->add_option("--trusted-proxy", cfg.trusted_proxies,
                    "peer whose X-Forwarded-For names the client; repeatable");
  serve->add_option("--tls-cert", cfg.tls_cert, "server certificate chain (PEM), from the service CA")
      ->envname("KEYLINE_SERVICE_TLS_CERT")
      ->required();
  serve->add_option("--tls-key", cfg.tls_key, "server private key (PEM)")
      ->envname("KEYLINE_SERVICE_TLS_KEY")
      ->required();
  serve->add_option("--threads", cfg.threads, "worker threads")
      ->envname("KEYLINE_SERVICE_THREADS")
      ->capture_default_str();
  serve->add_option("--io-threads", cfg.io_threads, "epoll loops")
      ->envname("KEYLINE_SERVICE_IO_THREADS")
      ->capture_default_str();
  serve->add_option("--max-connections", cfg.max_connections, "open connections in total")
      ->capture_default_str();
  serve->add_option("--max-per-client", cfg.max_per_client, "open connections per peer address")
      ->capture_default_str();
  serve->add_option("--max-queued", cfg.max_queued, "requests waiting for a worker (503 beyond)")
      ->capture_default_str();
  serve->add_option("--body-limit", cfg.body_limit, "largest request body in bytes (413 beyond)")
      ->capture_default_str();
  serve->add_option("--session-ttl", cfg.session_ttl_s, "seconds a session lives from its start")
      ->capture_default_str();
  serve->add_option("--jobs-per-session", cfg.jobs_per_session, "pending jobs one session applies")
      ->capture_default_str();
  serve->add_option("--db-pool", cfg.db_pool, "PostgreSQL connections")
      ->envname("KEYLINE_SERVICE_DB_POOL")
      ->capture_default_str();
  serve->add_option("--token-sessions", cfg.token_sessions, "PKCS#11 sessions")->capture_default_str();
  serve->add_option("--log", cfg.log, "request log: a path, stderr or off")
      ->envname("KEYLINE_SERVICE_LOG")
      ->capture_default_str();
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  keyline::service::CampaignRequest campaign;
  keyline::service::ModuleSignRequest sign;
  keyline::service::MessageRequest message;
  std::string status_name;
  bool status_json = false;
  CLI::App app{
      "keyline-service: the device service server (migrate | serve | campaign | module sign|keygen | message).\n"
      "Shipped devices call out over HTTPS; sessions run SCP03 (level 33, S16) keyed on the service token.\n"
      "See docs/service.md."};
  keyline::core::config::set_strict_config(app);
  app.require_subcommand(1);
  app.footer(
      "Exit codes: 0 ok, 1 failure (campaign status: jobs pending), 2 usage/config, 3 bad input (a campaign "
      "input or module; message: an unknown IMEI, a record that does not verify), 4 database or public DB "
      "unreachable, 5 refused (a campaign name reused with another payload), 6 token.");

  auto* migrate = app.add_subcommand("migrate", "apply the numbered SQL migrations (idempotent)");
  add_db(migrate, cfg);
  auto* serve = app.add_subcommand("serve", "serve the device API until SIGINT/SIGTERM");
  add_serve(serve, cfg);

  auto* camp =
      app.add_subcommand("campaign", "queue an item or a module for a list of IMEIs (rerun resumes)");
  camp->require_subcommand(0, 1);
  add_db(camp, cfg);
  camp->add_option("--name", campaign.name, "campaign name [A-Za-z0-9._-]{1,64}");
  camp->add_option("--item", campaign.item, "DGI=FILE: a configuration item (DGI 0Fxx)");
  camp->add_option("--module", campaign.module, "a signed module (keyline-service module sign)");
  camp->add_option("--put-key", campaign.put_key,
                   "rotate the communication key to derivation version 2 (PUT KEY)");
  camp->add_option("--trust", campaign.trust, "manufacturer root(s) the module's signer chains to");
  camp->add_option("--imeis", campaign.imeis_file, "file with one IMEI a line");
  auto* camp_status = camp->add_subcommand("status", "progress and per-device results");
  // `campaign status --db ...`: the database options are campaign's; let them follow `status` too.
  camp_status->fallthrough();
  camp_status->add_option("--name", status_name, "campaign name")->required();
  camp_status->add_flag("--json", status_json, "one JSON object");

  auto* module = app.add_subcommand("module", "software modules");
  module->require_subcommand(1);
  auto* msign = module->add_subcommand("sign", "sign a module body with the code-signing key on the token");
  add_token(msign, cfg.token);
  msign->add_option("--in", sign.in, "module body")->required();
  msign->add_option("--name", sign.name, "module name [a-z0-9._-]{1,64}")->required();
  msign->add_option("--version", sign.version, "module version (u32)")->required();
  msign->add_option("--cert", sign.certificate, "the code-signing certificate (PEM)")->required();
  msign->add_option("--key-label", sign.key_label, "the code-signing key's label on the token")
      ->capture_default_str();
  msign->add_option("--out", sign.out, "the signed module")->required();
  keyline::service::ModuleKeygenRequest keygen;
  auto* mkeygen = module->add_subcommand(
      "keygen", "make the code-signing key pair (P-256) on the token: sign only, its public half verify only");
  add_token(mkeygen, cfg.token);
  mkeygen->add_option("--key-label", keygen.key_label, "the key's label on the token")->capture_default_str();
  mkeygen->add_option("--key-id", keygen.key_id, "the key's CKA_ID in hex")->capture_default_str();

  auto* msg = app.add_subcommand(
      "message", "seal a file to a device's transport key from the public DB (it opens with service-agent open)");
  msg->add_option("--imei", message.imei, "the device's IMEI")->required();
  msg->add_option("--in", message.in, "the message (at most 1 MiB less 48 bytes)")->required();
  msg->add_option("--out", message.out, "the sealed message, enc || ciphertext (mode 0644)")->required();
  msg->add_option("--backupdb", message.backupdb, "https URL of the public backup DB")
      ->envname("KEYLINE_BACKUPDB_URL")
      ->required();
  msg->add_option("--backupdb-ca", message.backupdb_ca, "CA of the public DB's TLS certificate (PEM)")
      ->envname("KEYLINE_BACKUPDB_CA");
  msg->add_option("--trust", message.trust, "manufacturer root(s) (PEM) the record chains to; repeatable")
      ->envname("KEYLINE_SERVICE_TRUST")
      ->required();

  try {
    keyline::core::config::refuse_secret_flags(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keyline::core::exit_code::usage;
  }
  return keyline::core::run_guarded("keyline-service", [&] {
    keyline::core::refuse_password_on_command_line(argc, argv, "--db", true,
                                                   "--db-password-file, PGPASSWORD or PGPASSFILE");
    if (*migrate) {
      std::printf("keyline-service: %d migration(s) applied\n", keyline::service::migrate(cfg));
      return 0;
    }
    if (*serve) return keyline::service::serve(cfg);
    if (*msign) {
      keyline::service::module_sign(cfg.token, sign, std::cout);
      return 0;
    }
    if (*mkeygen) {
      keyline::service::module_keygen(cfg.token, keygen, std::cout);
      return 0;
    }
    if (*msg) {
      keyline::service::message_seal(message, std::cout);
      return 0;
    }
    if (*camp_status) return keyline::service::campaign_status(cfg, status_name, status_json, std::cout);
    if (campaign.name.empty() || campaign.imeis_file.empty())
      throw keyline::core::ConfigError(keyline::core::ErrorCode::Usage, "campaign needs --name and --imeis");
    keyline::service::campaign_enqueue(cfg, campaign, std::cout);
    return 0;
  });
}
