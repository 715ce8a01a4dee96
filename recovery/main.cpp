// keyline-recovery: parses options and calls the library (recovery/include/keyline/recovery/).
#include <CLI/CLI.hpp>

#include <chrono>
#include <iostream>

#include "keyline/core/error.h"
#include "keyline/recovery/errors.h"
#include "keyline/recovery/recovery.h"

int main(int argc, char** argv) {
  using namespace keyline::recovery;
  CLI::App app{"keyline-recovery: bring back a device whose flash was lost, from its public backup record.\n"
               "Everything is verified (chain to --trust, chip ID, IMEI, backup package) before the first write.\n"
               "Settings come from flags, KEYLINE_* environment variables or --config FILE."};
  app.set_config("--config", "", "config file (TOML or INI, keys = long option names)");
  app.require_subcommand(1);
  app.footer(kExitCodeHelp);

  RestoreOptions ro;
  FetchOptions fo;
  bool json = false;
  int backoff_ms = 250;
  int card_wait_s = 10;

  auto db_flags = [&](CLI::App* sub, DbOptions& db, bool required) {
    auto* o = sub->add_option("--db", db.url, "public DB base URL, e.g. https://backup.example:8443")
                  ->envname("KEYLINE_BACKUPDB_URL");
    if (required) o->required();
    sub->add_option("--ca", db.ca_file, "TLS trust file (PEM) for the public DB's server certificate")
        ->envname("KEYLINE_BACKUPDB_CA");
    sub->add_option("--attempts", db.attempts, "connection attempts before giving up")->capture_default_str();
    sub->add_option("--backoff-ms", backoff_ms, "wait after the first failed attempt, doubled each time")
        ->capture_default_str();
  };

  auto* restore = app.add_subcommand("restore", "verify the record of the device's chip (--device or --reader), write it as the flash image, boot it");
  auto* device = restore->add_option("--device", ro.device, "device link HOST:PORT (vpcd framing over TCP)")
                     ->envname("KEYLINE_DEVICE");
  auto* reader = restore->add_option("--reader", ro.reader,
                                     "PC/SC reader: a name or pattern (substring, or glob with * ? [) matching exactly one "
                                     "reader; a reader without a card is waited for up to --card-wait")
                     ->envname("KEYLINE_READER");
  device->excludes(reader);
  restore->add_option("--card-wait", card_wait_s, "seconds to wait for a card in the --reader")
      ->check(CLI::Range(0, 3600))
      ->capture_default_str();
  restore->add_option("--trust", ro.trust_file, "manufacturer root certificate(s) (PEM): anchor of device certificates")
      ->envname("KEYLINE_TRUST")->required();
  db_flags(restore, ro.db, false);
  restore->add_option("--image", ro.bundle, "offline bundle from `fetch`; when given, --db is not used (no network)");
  restore->add_flag("--dry-run", ro.dry_run, "verify everything and print, write nothing");
  restore->add_flag("--json", json, "print the result as one JSON object");

  auto* fetch = app.add_subcommand("fetch", "fetch a chip's record into an offline bundle for `restore --image`");
  fetch->add_option("--chip-id", fo.chip_id, "chip ID (20 hex digits, as keyline-device status prints it)")->required();
  db_flags(fetch, fo.db, true);
  fetch->add_option("--out", fo.out, "bundle file to write")->required();
  fetch->add_option("--trust", fo.trust_file, "also verify the record against this root before writing the bundle");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keyline::core::exit_code::usage;
  }
  return run_guarded([&]() -> int {
    if (*restore) {
      ro.db.backoff = std::chrono::milliseconds(backoff_ms);
      ro.card_wait = std::chrono::seconds(card_wait_s);
      if (ro.bundle.empty() && ro.db.url.empty())
        throw keyline::core::ConfigError(keyline::core::ErrorCode::Usage, "restore needs --db URL or --image FILE");
      const auto r = keyline::recovery::restore(ro, &std::cerr);
      std::cout << format_result(r, json);
      return exit_code::ok;
    }
    fo.db.backoff = std::chrono::milliseconds(backoff_ms);
    keyline::recovery::fetch(fo, &std::cerr);
    return exit_code::ok;
  });
}
