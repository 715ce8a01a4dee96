// keyline-station: options only; the work is in keyline_station (station/src).
#include <iostream>

#include <CLI/CLI.hpp>

#include "keyline/core/config_file.h"
#include "keyline/core/log_format.h"
#include "keyline/core/error.h"
#include "keyline/core/guard.h"
#include "keyline/core/secret_input.h"
#include "keyline/station/commands.h"
#include "keyline/station/custody.h"
#include "keyline/station/outbox_log.h"

namespace {

// `keys roll|mirror|export|import|status|check` (docs/custody.md): their options, then their run.
struct CustodyCommands {
  CLI::App *roll, *receive_init, *trust, *send, *receive, *export_, *import, *status, *check;
  keyline::station::CustodyRequest request;
  std::string what;
};

void add_custody_commands(CLI::App* keys, CustodyCommands& c) {
  auto& r = c.request;
  c.roll = keys->add_subcommand("roll", "make the next version of a key beside the old one (docs/custody.md)");
  c.roll->add_option("what", c.what, "master (its next version is mirrorable; earlier devices keep theirs), device-ca "
                                     "or station-tls (a CSR under the offline root, else certified at once)")
      ->required()->check(CLI::IsMember({"master", "device-ca", "station-tls"}));
  auto* mirror = keys->add_subcommand("mirror", "mirror the master to another station's token under dual control");
  mirror->require_subcommand(1);
  c.receive_init = mirror->add_subcommand("receive-init", "receiving token: make a receiving key, write its request");
  c.receive_init->add_option("--out", r.out_file, "request file to hand to the sending station")->required();
  c.trust = mirror->add_subcommand("trust", "sending token's Security Officer: trust a request's receiving key");
  c.trust->add_option("--request", r.request_file, "request file from receive-init")->required()->check(CLI::ExistingFile);
  c.trust->add_option("--so-pin-file", r.so_pin_file, "file holding the token's SO PIN (else KEYLINE_HSM_SO_PIN_FILE, "
                                                      "KEYLINE_HSM_SO_PIN; never a flag)");
  c.send = mirror->add_subcommand("send", "sending token's user: wrap the master to a trusted receiving key");
  c.export_ = keys->add_subcommand("export", "wrap the master for a new host's token (the steps of mirror send)");
  for (auto* sub : {c.send, c.export_}) {
    sub->add_option("--to", r.request_file, "request file of the receiving token")->required()->check(CLI::ExistingFile);
    sub->add_option("--out", r.out_file, "wrapped master and signed manifest")->required();
    sub->add_option("--version", r.version, "master version (default: the newest)");
  }
  c.receive = mirror->add_subcommand("receive", "receiving token: check the manifest and unwrap the master");
  c.import = keys->add_subcommand("import", "import an exported master (the steps of mirror receive)");
  for (auto* sub : {c.receive, c.import}) {
    sub->add_option("--in", r.in_file, "wrapped master and manifest")->required()->check(CLI::ExistingFile);
    sub->add_option("--from", r.from_cert, "the sending station's certificate (PEM)")->required()->check(CLI::ExistingFile);
  }
  c.status = keys->add_subcommand("status", "every key on the token, certificate in --pki-dir, and the mirror state");
  c.status->add_flag("--json", r.json, "machine-readable output");
  c.check = keys->add_subcommand("check", "the communication key check value of one IMEI (compare two mirrors)");
  c.check->add_option("--imei", r.imei, "IMEI")->required();
  c.check->add_option("--version", r.version, "master version (default: the newest)");
  c.check->add_option("--chip", r.chip, "chip ID, 20 hex digits (master version 2 and later derive from it)");
}

// -1 when none of them was given.
int run_custody(const CustodyCommands& c, const keyline::station::StationConfig& cfg) {
  using namespace keyline::station;
  if (*c.roll) keys_roll(cfg, c.what, std::cout);
  else if (*c.receive_init) mirror_receive_init(cfg, c.request, std::cout);
  else if (*c.trust) mirror_trust(cfg, c.request, std::cout);
  else if (*c.send) mirror_send(cfg, c.request, "mirror", std::cout);
  else if (*c.export_) mirror_send(cfg, c.request, "export", std::cout);
  else if (*c.receive) mirror_receive(cfg, c.request, "mirror", std::cout);
  else if (*c.import) mirror_receive(cfg, c.request, "export", std::cout);
  else if (*c.status) keys_status(cfg, c.request.json, std::cout);
  else if (*c.check) keys_check(cfg, c.request, std::cout);
  else return -1;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace keyline::station;
  CLI::App app{
      "keyline-station: the secure processing point of the line. It claims IMEIs and device keys from the\n"
      "temporary secure DB, reads each device's chip ID, signs identity certificates with the Device CA key\n"
      "in the HSM, stores the data package, checks the device's backup and publishes it to the public DB.\n\n"
      "Settings: flags, else environment (KEYLINE_STATION_DB, KEYLINE_HSM_MODULE, KEYLINE_HSM_TOKEN,\n"
      "KEYLINE_HSM_PIN_FILE or KEYLINE_HSM_PIN, KEYLINE_PKI_DIR, KEYLINE_BACKUPDB_URL, KEYLINE_STATION_ID),\n"
      "else the TOML (or JSON) file given with --config. The PIN is never taken from a flag.\n\n"
      "Exit codes: 0 ok, 1 failure, 2 usage/config, 3 bad input, 4 unreachable (records wait in the\n"
      "outbox), 5 refused, 6 HSM problem.",
      "keyline-station"};
  app.require_subcommand(1);
  StationConfig cfg;
  app.add_option("--log-format", cfg.log_format, "stderr log lines: text (default), or json (one JSON object per "
                                                 "line; docs/operations.md, \"Logs\"). Config log_format")
      ->envname("KEYLINE_LOG_FORMAT")
      ->check(CLI::IsMember({"text", "json"}));
  std::string config_file;
  app.add_option("--config", config_file, "TOML config file, or JSON (keys: db, hsm_module, token_label, pin_file, ...)");
  app.add_option("--db", cfg.db,
                 "libpq connection string of the station database, without a password (a password on the command "
                 "line is refused: use --db-password-file, PGPASSWORD or PGPASSFILE)");
  std::string db_password_file;
  app.add_option("--db-password-file", db_password_file, "file holding the station database's password")
      ->envname("KEYLINE_STATION_DB_PASSWORD_FILE");
  app.add_option("--hsm-module", cfg.hsm_module, "PKCS#11 module (default: SoftHSM2)");
  app.add_option("--token", cfg.token_label, "token label")->capture_default_str();
  app.add_option("--pin-file", cfg.pin_file, "file holding the token user PIN");
  app.add_option("--pki-dir", cfg.pki_dir, "directory of the certificates made by `keys init`")->capture_default_str();
  app.add_option("--backupdb", cfg.backupdb_url, "public DB URL, https://host:port");
  app.add_option("--station-id", cfg.station_id, "this station's name in journals and packages")->capture_default_str();
  app.add_option("--hw-type", cfg.hw_type, "HardwareModuleName hwType OID (default 1.3.6.1.4.1.59999.1.1)");
  app.add_option("--key-source", cfg.key_source,
                 "generate: keys made per device on the station; pool: pre-generated keys; device: made and "
                 "attested in the chip (GENERATE KEY; needs --channel scp11a). Config key_source, env KEYLINE_KEY_SOURCE")
      ->check(CLI::IsMember({"generate", "pool", "device"}))
      ->capture_default_str();
  app.add_option("--channel", cfg.channel,
                 "scp11a: check each chip's vendor identity (--chip-vendors) and personalize over GlobalPlatform "
                 "SCP11a; plain: devices without a vendor identity, said for every device. Config channel, env "
                 "KEYLINE_CHANNEL")
      ->check(CLI::IsMember({"scp11a", "plain"}))
      ->capture_default_str();
  app.add_option("--chip-vendors", cfg.chip_vendors,
                 "PEM file of the chip vendor CA certificates whose chips are genuine (needed by --channel scp11a). "
                 "Config chip_vendors, env KEYLINE_CHIP_VENDORS");
  app.add_flag("--short-apdus", cfg.short_apdus,
               "only short APDUs (240-byte STORE DATA blocks, 256-byte answers) for readers without extended "
               "length; default: one extended APDU per package (env KEYLINE_SHORT_APDUS=1)");

  auto* keys = app.add_subcommand("keys", "manufacturer keys in the HSM");
  keys->require_subcommand(1);
  KeysInitOptions keys_opt;
  auto* keys_init = keys->add_subcommand(
      "init", "create what is missing of the root, Device CA, service CA, station TLS, master, wrapping and SCP11a "
              "OCE keys on the token and of the certificates in --pki-dir; keys already on the token are reused, so an "
              "interrupted init is finished by running it again");
  keys_init->add_option("--organization", keys_opt.organization, "O= of the CA certificates")->capture_default_str();
  keys_init->add_flag("--offline-root", keys_opt.offline_root,
                      "the root stays on the ceremony's token: make only the Device CA, station TLS, master and "
                      "wrapping keys and write device-ca.csr, station.csr and service-ca.csr into --pki-dir (docs/station.md)");
  std::string install_root;
  std::vector<std::string> install_certs;
  auto* install_cert = keys->add_subcommand(
      "install-cert", "install the certificates keyline-ceremony signed from the CSRs of `keys init --offline-root`");
  install_cert->add_option("--root", install_root, "the offline root certificate (PEM), the station's trust anchor")
      ->required()->check(CLI::ExistingFile);
  install_cert->add_option("--cert", install_certs, "a signed certificate (PEM; repeatable)")
      ->required()->check(CLI::ExistingFile);
  auto* server_cert = keys->add_subcommand(
      "server-cert", "make new public DB, KPS and service server keys and certificates (e.g. for new --dns/--ip)");
  server_cert->add_option("--for", keys_opt.reissue_for, "only this server's (repeatable; default all)")
      ->check(CLI::IsMember({"backupdb", "kps", "service"}));
  for (auto* sub : {keys_init, server_cert}) {
    sub->add_option("--dns", keys_opt.dns_names, "server certificate DNS name (repeatable; default localhost)");
    sub->add_option("--ip", keys_opt.ip_addresses, "server certificate IPv4 address (repeatable; default 127.0.0.1)");
  }

  CustodyCommands custody;
  add_custody_commands(keys, custody);

  auto* pool = app.add_subcommand("pool", "the temporary secure DB of IMEIs and pre-generated keys");
  pool->require_subcommand(1);
  std::string tac, csv;
  std::int64_t count = 0, nkeys = 0;
  bool json = false;
  auto* pool_gen = pool->add_subcommand("generate", "add IMEIs from a TAC range (continuing after the last serial "
                                                    "ever used) and/or pre-generated key sets");
  pool_gen->add_option("--tac", tac, "type allocation code, 8 digits");
  pool_gen->add_option("--count", count, "IMEIs to add");
  pool_gen->add_option("--keys", nkeys, "key sets to pre-generate (private halves wrapped by the token)");
  auto* pool_imp = pool->add_subcommand("import", "add IMEIs from a CSV file (first column); a bad line refuses all");
  pool_imp->add_option("csv", csv, "CSV file")->required();
  auto* pool_st = pool->add_subcommand("status", "what the pool holds");
  pool_st->add_flag("--json", json, "machine-readable output");

  PersonalizeRequest pers_req;
  std::string pers_all, run_all;
  auto* pers = app.add_subcommand(
      "personalize", "personalize devices one after the other (claim, read chip ID, sign, store, check backup, "
                     "publish); a device is done only when the public DB has its record. Fixtures are emulated "
                     "devices over TCP (--device) or cards in PC/SC readers (--reader): the TCP devices first, then "
                     "the readers in the order pcscd lists them");
  pers->add_option("--device", pers_req.devices, "device address HOST:PORT (repeat for several)");
  pers->add_option("--reader", pers_req.readers,
                   "PC/SC reader pattern (repeat for several): a shell glob when it holds * ? or [ (\"*vpcd*\"), "
                   "else a part of the reader's name (\"Gemalto\"); each matching reader is personalized once, and "
                   "a reader without a card is waited for (see --card-wait). No reader matching: error 1422, exit 4; "
                   "pcscd not running: error 1421, exit 4 (`opensc-tool --list-readers` shows the reader names)");
  pers->add_option("--readers", pers_all, "all: every reader pcscd lists")->check(CLI::IsMember({"all"}));
  pers->add_option("--card-wait", pers_req.card_wait_s,
                   "seconds a reader without a card is waited for (a message on stderr says which); then that "
                   "reader fails and the next one is taken")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  pers->add_flag("--json", pers_req.json, "one JSON line per device");

  RunRequest run_req;
  auto* run = app.add_subcommand(
      "run", "run the line: personalize many devices at once from a line profile or a device fleet, until all "
             "are done, --count are done, or SIGINT/SIGTERM (in-flight devices finish, nothing new starts)");
  run->add_option("--profile", run_req.profile, "line profile (JSON: devices, concurrency, tac, application_items ...)");
  run->add_option("--device", run_req.devices, "device address HOST:PORT (repeat for several)");
  run->add_option("--fleet", run_req.fleet_file, "file of `keyline-device serve --fleet` lines: listening HOST:PORT CHIPID DIR");
  run->add_option("--fleet-ports", run_req.fleet_ports, "[HOST:]BASE:COUNT consecutive device ports");
  run->add_option("--reader", run_req.readers,
                  "a line on PC/SC readers: reader pattern (repeat for several; a shell glob when it holds * ? or "
                  "[, else a part of the name). Each card put into a matching reader is personalized, one at a "
                  "time per reader; a card left in after it is done is not taken again until it is pulled out and "
                  "put back; a card pulled out mid-way keeps its IMEI and resumes when it comes back. Ends on "
                  "SIGINT/SIGTERM, --count or --idle-exit (docs/line.md)");
  run->add_option("--readers", run_all, "all: a line on every reader pcscd lists")->check(CLI::IsMember({"all"}));
  run->add_option("--idle-exit", run_req.idle_exit_s,
                  "a line on readers: end after this many seconds with no card to do (0: never)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  run->add_option("--concurrency,-j", run_req.concurrency,
                  "devices at once (default: the profile's, else 8; on readers at least one per reader)");
  run->add_option("--count", run_req.count, "stop once this many devices are done (published)");
  run->add_option("--db-wait", run_req.db_wait_s,
                  "seconds devices wait for an unreachable station database (restart, failover) before they fail")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  run->add_option("--publish-wait", run_req.publish_wait_s, "seconds to wait for the outbox after the last device")
      ->capture_default_str();
  run->add_option("--ops-listen", run_req.ops_listen,
                  "operations listener, plain HTTP: /metrics (Prometheus text) and /healthz; PORT binds 127.0.0.1 "
                  "(docs/station.md, \"Metrics and the line page\")");
  run->add_option("--status-listen", run_req.status_listen,
                  "the line page, plain HTTP and read-only: / and its server-sent events at /events; PORT binds "
                  "127.0.0.1");
  run->add_option("--progress", run_req.progress, "auto | tty | plain")
      ->check(CLI::IsMember({"auto", "tty", "plain"}))
      ->capture_default_str();
  run->add_option("--summary-json", run_req.summary_json, "also write the summary as one JSON object to FILE");
  // Failover (docs/custody.md "Failover"): a second token, a station of its own under the same root.
  run->add_option("--secondary-token-label", run_req.secondary_token,
                  "failover: the secondary token (its own Device CA and station key under the same root, the master "
                  "mirrored); the line switches to it when the primary token fails")
      ->envname("KEYLINE_SECONDARY_HSM_TOKEN");
  run->add_option("--secondary-module", run_req.secondary_module, "failover: its PKCS#11 module (default: the primary's)")
      ->envname("KEYLINE_SECONDARY_HSM_MODULE");
  run->add_option("--secondary-pin-file", run_req.secondary_pin_file,
                  "failover: file holding its user PIN (default: the primary's PIN)")
      ->envname("KEYLINE_SECONDARY_HSM_PIN_FILE");
  run->add_option("--secondary-pki", run_req.secondary_pki,
                  "failover: its PKI directory (device-ca.pem, station-tls.pem, root.pem, tls-ca.pem)")
      ->envname("KEYLINE_SECONDARY_PKI_DIR");

  std::int64_t floor_devices = 2000;
  int floor_threads = 2;
  auto* floor = app.add_subcommand("bench-floor", "benchmark only: devices/s of the cryptography alone (key generation, "
                                                  "two token signatures, package, sealing)");
  floor->add_option("--devices", floor_devices, "devices to simulate")->capture_default_str();
  floor->add_option("--threads", floor_threads, "threads")->capture_default_str();

  auto* publish = app.add_subcommand("publish", "send the records waiting in the outbox to the public DB");
  bool retry_refused_flag = false;
  std::string retry_chip;
  publish->add_flag("--retry-refused", retry_refused_flag,
                    "also send the records the public DB refused for good (409, 422, ...) again, once the cause is "
                    "fixed; without it they stay parked");
  publish->add_option("--chip", retry_chip, "with --retry-refused: only this chip's record")->needs("--retry-refused");
  // The transparency log's proofs of the published records (docs/transparency.md "Clients").
  auto* outbox = app.add_subcommand("outbox", "the outbox's records in the public DB's transparency log");
  auto* check_log = outbox->add_subcommand("check-log", "verify and keep the inclusion proof of every published record "
                                                        "not yet proved (exit 3: the log does not prove one)");
  outbox->require_subcommand(1);
  keyline::station::LogCheckOptions log_opt;
  auto* log_key = check_log->add_option("--log-key", log_opt.log_key, "the log's verifier key (C2SP vkey, from "
                                                                     "`keyline-backupdb log key`)")->envname("KEYLINE_LOG_KEY");
  check_log->add_option("--log-key-file", log_opt.log_key_file, "a file holding it")
      ->envname("KEYLINE_LOG_KEY_FILE")->excludes(log_key);
  check_log->add_option("--limit", log_opt.limit, "records checked in this run")->capture_default_str();
  check_log->add_option("--rate", log_opt.rate, "requests per second at most")->check(CLI::Range(1, 10000))->capture_default_str();
  check_log->add_option("--max-wait", log_opt.max_wait_s, "seconds a published record may stay out of every checkpoint "
                                                          "before it is an alarm")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  auto* status = app.add_subcommand("status", "journal states, outbox and pool");
  status->add_flag("--json", json, "machine-readable output");

  try {
    keyline::core::config::refuse_secret_flags(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keyline::core::exit_code::usage;  // docs/operations.md: 2 = usage
  }

  // Flag or environment now, so even a refused config file is said in that form; the file's after it is read.
  keyline::core::log::use_format(keyline::core::log::parse_format(cfg.log_format), "keyline-station");
  return keyline::core::run_guarded("keyline-station", [&]() -> int {
    // argv is readable by every user of the host (docs/operations.md, "Secrets").
    keyline::core::refuse_password_on_command_line(argc, argv, "--db", true,
                                                   "--db-password-file, PGPASSWORD or PGPASSFILE");
    if (!db_password_file.empty()) keyline::core::export_pgpassword(keyline::core::read_secret_file(db_password_file));
    // complete_config takes a field equal to its default for unset; a flag given with that value must
    // still win over the environment and the file, so it is put back afterwards (already valid).
    const StationConfig flags = cfg;
    complete_config(cfg, config_file);
    keyline::core::log::use_format(keyline::core::log::parse_format(cfg.log_format), "keyline-station");
    if (app.get_option("--token")->count() > 0) cfg.token_label = flags.token_label;
    if (app.get_option("--pki-dir")->count() > 0) cfg.pki_dir = flags.pki_dir;
    if (app.get_option("--station-id")->count() > 0) cfg.station_id = flags.station_id;
    if (app.get_option("--key-source")->count() > 0) cfg.key_source = flags.key_source;
    if (app.get_option("--channel")->count() > 0) cfg.channel = flags.channel;
    if (*keys_init) return cmd_keys_init(cfg, keys_opt);
    if (*install_cert) return cmd_keys_install_cert(cfg, install_root, install_certs);
    if (const int rc = run_custody(custody, cfg); rc >= 0) return rc;
    if (*server_cert) {
      keys_opt.reissue_server_certs = true;
      return cmd_keys_init(cfg, keys_opt);
    }
    if (*pool_gen) return cmd_pool_generate(cfg, tac, count, nkeys);
    if (*pool_imp) return cmd_pool_import(cfg, csv);
    if (*pool_st) return cmd_pool_status(cfg, json);
    if (!pers_all.empty()) pers_req.readers.push_back(pers_all);
    if (!run_all.empty()) run_req.readers.push_back(run_all);
    if (*pers) return cmd_personalize(cfg, pers_req);
    if (*run) return cmd_run(cfg, run_req);
    if (*floor) return cmd_bench_floor(cfg, floor_devices, floor_threads);
    if (*publish) return cmd_publish(cfg, retry_refused_flag, retry_chip);
    if (*status) return cmd_status(cfg, json);
    if (*check_log) return keyline::station::cmd_outbox_check_log(cfg, log_opt);
    return 2;
  });
}
