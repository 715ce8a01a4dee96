// keyline-recovery: parses options and calls the library (recovery/include/keyline/recovery/).
#include <CLI/CLI.hpp>

#include <chrono>
#include <iostream>

#include "keyline/core/config_file.h"
#include "keyline/core/log_format.h"
#include "keyline/core/error.h"
#include "keyline/recovery/errors.h"
#include "keyline/recovery/log_monitor.h"
#include "keyline/recovery/log_verify.h"
#include "keyline/recovery/recovery.h"

namespace {

using namespace keyline::recovery;

// What the command line fills in, for all three subcommands.
struct Cli {
  RestoreOptions ro;
  FetchOptions fo;
  bool json = false;
  int backoff_ms = 250;
  int card_wait_s = 10;
  std::string proof_file;
  CLI::App* restore = nullptr;
  CLI::App* fetch = nullptr;
  CLI::App* log = nullptr;
  CLI::App* inclusion = nullptr;
  CLI::App* monitor = nullptr;
  MonitorOptions mo;
};

void add_db_flags(CLI::App* sub, DbOptions& db, int& backoff_ms, bool required) {
  auto* o = sub->add_option("--db", db.url, "public DB base URL, e.g. https://backup.example:8443")
                ->envname("KEYLINE_BACKUPDB_URL");
  if (required) o->required();
  sub->add_option("--ca", db.ca_file, "TLS trust file (PEM) for the public DB's server certificate")
      ->envname("KEYLINE_BACKUPDB_CA");
  sub->add_option("--attempts", db.attempts, "connection attempts before giving up")->capture_default_str();
  sub->add_option("--backoff-ms", backoff_ms, "wait after the first failed attempt, doubled each time")
      ->capture_default_str();
}

// The pinned log key and the state file (docs/recovery.md section 7).
void add_log_key_flags(CLI::App* sub, LogOptions& log) {
  auto* key = sub->add_option("--log-key", log.log_key,
                              "the public DB log's verifier key (C2SP vkey: NAME+KEYID+BASE64, from `keyline-backupdb log key`)")
                  ->envname("KEYLINE_LOG_KEY");
  auto* file = sub->add_option("--log-key-file", log.log_key_file, "a file holding that verifier key")
                   ->envname("KEYLINE_LOG_KEY_FILE");
  key->excludes(file);
  sub->add_option("--log-state", log.state_file,
                  "the last checkpoint seen per log, for the consistency check (default "
                  "$XDG_STATE_HOME/keyline/log-state or ~/.local/state/keyline/log-state)")
      ->envname("KEYLINE_LOG_STATE");
}

// The transparency-log check of a record fetched from --db.
void add_log_flags(CLI::App* sub, LogOptions& log) {
  add_log_key_flags(sub, log);
  sub->add_option("--witness-key", log.witness_keys,
                  "a witness's cosigner key (C2SP vkey of type 0x04, from `keyline-backupdb witness key`), repeatable");
  sub->add_option("--witnesses", log.witnesses, "refuse a checkpoint without this many valid cosignatures by those keys")
      ->capture_default_str();
  // Not exclusive with the key: a key pinned in the environment or a config file stays there.
  sub->add_flag("--no-log-check", log.skip,
                "do NOT check that the record is in the transparency log (loud warning; for a DB without a log); "
                "wins over --log-key");
}

void add_restore(CLI::App& app, Cli& c) {
  auto* restore = app.add_subcommand("restore", "verify the record of the device's chip (--device or --reader), write it as the flash image, boot it");
  auto* device = restore->add_option("--device", c.ro.device, "device link HOST:PORT (vpcd framing over TCP)")
                     ->envname("KEYLINE_DEVICE");
  auto* reader = restore->add_option("--reader", c.ro.reader,
                                     "PC/SC reader: a name or pattern (substring, or glob with * ? [) matching exactly one "
                                     "reader; a reader without a card is waited for up to --card-wait")
                     ->envname("KEYLINE_READER");
  device->excludes(reader);
  restore->add_option("--card-wait", c.card_wait_s, "seconds to wait for a card in the --reader")
      ->check(CLI::Range(0, 3600))
      ->capture_default_str();
  restore->add_option("--trust", c.ro.trust_file, "manufacturer root certificate(s) (PEM): anchor of device certificates")
      ->envname("KEYLINE_TRUST")->required();
  add_db_flags(restore, c.ro.db, c.backoff_ms, false);
  add_log_flags(restore, c.ro.log);
  restore->add_option("--image", c.ro.bundle, "offline bundle from `fetch`; when given, --db is not used (no network)");
  restore->add_flag("--dry-run", c.ro.dry_run, "verify everything and print, write nothing");
  restore->add_flag("--json", c.json, "print the result as one JSON object");
  c.restore = restore;
}

void add_fetch(CLI::App& app, Cli& c) {
  auto* fetch = app.add_subcommand("fetch", "fetch a chip's record into an offline bundle for `restore --image`");
  fetch->add_option("--chip-id", c.fo.chip_id, "chip ID (20 hex digits, as keyline-device status prints it)")->required();
  add_db_flags(fetch, c.fo.db, c.backoff_ms, true);
  add_log_flags(fetch, c.fo.log);
  fetch->add_option("--out", c.fo.out, "bundle file to write")->required();
  fetch->add_option("--trust", c.fo.trust_file, "also verify the record against this root before writing the bundle");
  c.fetch = fetch;
}

// verify-*: offline, nothing opens a socket or a device (docs/recovery.md section 6); monitor: section 8.
void add_log(CLI::App& app, Cli& c) {
  auto* log = app.add_subcommand("log", "check transparency-log proofs offline, from files, or monitor a log (issue #18)");
  log->require_subcommand(1);
  log->footer(
      "A proof file is one JSON object in the transparency-dev test-data form (tests/vectors/merkle/README.md):\n"
      "  inclusion:   {\"leafIdx\": 0, \"treeSize\": 8, \"root\": B64, \"leafHash\": B64, \"proof\": [B64, ...]}\n"
      "  consistency: {\"size1\": 3, \"size2\": 8, \"root1\": B64, \"root2\": B64, \"proof\": [B64, ...]}\n"
      "B64 is standard base64 with padding; leafHash is SHA-256(0x00 || leaf); leafIdx is 0-based; proof may be\n"
      "null or []. \"desc\" and \"wantErr\" may be present and are printed, never trusted. Any other field, a\n"
      "repeated key, a negative or fractional number or one above 2^64-1 makes the file malformed.\n"
      "Exit codes: 0 the proof verifies, 3 it does not or the file is malformed, 2 usage or unreadable file.\n"
      "monitor: 0 the log verified, 3 it does not (5009) or a chip ID or IMEI is logged twice, 5 it forked (5010),\n"
      "4 the public DB cannot be reached.");
  auto* incl = log->add_subcommand("verify-inclusion", "does leafHash sit at leafIdx in the tree of treeSize leaves with that root? (RFC 9162 2.1.3.2)");
  incl->add_option("--proof", c.proof_file, "inclusion proof file (JSON, see `log --help`)")->required();
  auto* cons = log->add_subcommand("verify-consistency", "is the tree of size1 with root1 a prefix of the tree of size2 with root2? (RFC 9162 2.1.4.2)");
  cons->add_option("--proof", c.proof_file, "consistency proof file (JSON, see `log --help`)")->required();
  auto* mon = log->add_subcommand("monitor", "follow a public DB's log: checkpoint under --log-key, consistent with "
                                             "--log-state, every tile and entry recomputed, chip IDs and IMEIs logged twice (online)");
  add_db_flags(mon, c.mo.db, c.backoff_ms, true);
  add_log_key_flags(mon, c.mo.log);
  mon->add_flag("!--no-entries", c.mo.entries, "check the hash tiles only, not the entry bundles (no duplicate scan)");
  c.log = log;
  c.inclusion = incl;
  c.monitor = mon;
}

int run(Cli& c) {
  if (*c.monitor) {
    c.mo.db.backoff = std::chrono::milliseconds(c.backoff_ms);
    const auto r = monitor_log(c.mo, &std::cerr);
    std::cout << format_monitor_report(r);
    return r.duplicates.empty() ? exit_code::ok : exit_code::verification_failed;
  }
  if (*c.log) {
    namespace lv = keyline::recovery::log_verify;
    const auto r = *c.inclusion ? lv::check_inclusion_file(c.proof_file) : lv::check_consistency_file(c.proof_file);
    std::cout << lv::format_report(r);
    return r.valid ? exit_code::ok : exit_code::verification_failed;
  }
  if (*c.restore) {
    c.ro.db.backoff = std::chrono::milliseconds(c.backoff_ms);
    c.ro.card_wait = std::chrono::seconds(c.card_wait_s);
    if (c.ro.bundle.empty() && c.ro.db.url.empty())
      throw keyline::core::ConfigError(keyline::core::ErrorCode::Usage, "restore needs --db URL or --image FILE");
    const auto r = keyline::recovery::restore(c.ro, &std::cerr);
    std::cout << format_result(r, c.json);
    return exit_code::ok;
  }
  c.fo.db.backoff = std::chrono::milliseconds(c.backoff_ms);
  keyline::recovery::fetch(c.fo, &std::cerr);
  return exit_code::ok;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keyline-recovery: bring back a device whose flash was lost, from its public backup record.\n"
               "Everything is verified (chain to --trust, chip ID, IMEI, backup package, and that the record is in the\n"
               "public DB's transparency log under the pinned --log-key) before the first write.\n"
               "Settings come from flags, KEYLINE_* environment variables or --config FILE."};
  keyline::core::config::set_strict_config(app);
  app.require_subcommand(1);
  app.footer(kExitCodeHelp);
  Cli c;
  std::string log_format = "text";
  app.add_option("--log-format", log_format, "stderr log lines: text, or json (one JSON object per line; "
                                              "docs/operations.md, \"Logs\")")
      ->envname("KEYLINE_LOG_FORMAT")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  add_restore(app, c);
  add_fetch(app, c);
  add_log(app, c);
  try {
    keyline::core::config::refuse_secret_flags(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : keyline::core::exit_code::usage;
  }
  keyline::core::log::use_format(keyline::core::log::parse_format(log_format), "keyline-recovery");
  return run_guarded([&]() -> int { return run(c); });
}
