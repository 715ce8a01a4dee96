#include "keyline/station/commands.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>

#include <unistd.h>

#include "keyline/core/cplc.h"
#include "keyline/core/error.h"
#include "keyline/core/http.h"
#include "keyline/core/log_format.h"
#include "keyline/core/pcsc.h"
#include "keyline/core/pq.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"
#include "keyline/station/line.h"
#include "keyline/station/personalize.h"
#include "keyline/station/pool.h"

namespace keyline::station {

namespace {

core::pq::Connection open_db(const StationConfig& config) {
  if (config.db.empty())
    throw core::ConfigError(core::ErrorCode::Config, "no station database: set --db or KEYLINE_STATION_DB");
  core::pq::Connection conn(config.db);
  migrate_station_db(conn);
  return conn;
}

std::string esc(const std::string& s) { return core::http::json_escape(s); }

bool is_refusal(int code) {
  for (const auto c : {errc::DeviceRefused, errc::AlreadyPersonalized, errc::BackupMismatch, errc::PublishRejected,
                       errc::JournalConflict, core::ErrorCode::SecureChannel, core::ErrorCode::ChipNotGenuine,
                       core::ErrorCode::ChipIdMismatch, core::ErrorCode::BadAttestation,
                       core::ErrorCode::AttestationMismatch})
    if (code == static_cast<int>(c)) return true;
  return false;
}

}  // namespace

int cmd_keys_init(const StationConfig& config, const KeysInitOptions& options) {
  if (options.offline_root) {
    keys_csr(config, options, std::cout);
  } else {
    keys_init(config, options, std::cout);
  }
  return 0;
}

int cmd_keys_install_cert(const StationConfig& config, const std::string& root_pem,
                          const std::vector<std::string>& cert_files) {
  keys_install_cert(config, root_pem, cert_files, std::cout);
  return 0;
}

int cmd_pool_generate(const StationConfig& config, const std::string& tac, std::int64_t count, std::int64_t keys) {
  auto db = open_db(config);
  if (count > 0) {
    const auto [first, last] = pool_generate_imeis(db, tac, count);
    std::cout << "pool: added " << count << " IMEIs " << first << " .. " << last << "\n";
  }
  if (keys > 0) {
    auto k = StationKeys::open(config, 2);
    pool_generate_keys(db, *k.token, keys, &std::cout);
    std::cout << "pool: added " << keys << " key sets (wrapped by the token key " << key_label::wrap << ")\n";
  }
  if (count <= 0 && keys <= 0) throw core::ConfigError(core::ErrorCode::Usage, "nothing to do: give --count and/or --keys");
  return 0;
}

int cmd_pool_import(const StationConfig& config, const std::string& csv) {
  auto db = open_db(config);
  const auto r = pool_import_csv(db, csv);
  std::cout << "pool: imported " << r.added << " IMEIs from " << csv << " (" << r.skipped
            << " skipped: already in the pool or already issued)\n";
  return 0;
}

int cmd_pool_status(const StationConfig& config, bool json) {
  auto db = open_db(config);
  const auto s = pool_status(db);
  if (json) {
    std::cout << "{\"imeis\":" << s.imeis << ",\"imeis_spent\":" << s.imeis_spent << ",\"keys\":" << s.keys
              << ",\"tacs\":\"" << esc(s.tacs) << "\"}\n";
  } else {
    std::cout << "IMEIs in the pool:      " << s.imeis << (s.tacs.empty() ? "" : " (TAC " + s.tacs + ")") << "\n"
              << "IMEIs issued or voided: " << s.imeis_spent << "\n"
              << "pre-generated key sets: " << s.keys << "\n";
  }
  return 0;
}

namespace {

struct PersonalizeTally {
  int failed = 0, refused = 0, waiting = 0;
};

void report_device(const std::string& d, const DeviceResult& r, bool json, PersonalizeTally& t) {
  if (json) {
    std::cout << "{\"device\":\"" << esc(d) << "\",\"chip_id\":\"" << esc(r.chip_id) << "\",\"imei\":\""
              << esc(r.imei) << "\",\"done\":" << (r.done ? "true" : "false")
              << ",\"in_outbox\":" << (r.in_outbox ? "true" : "false") << ",\"step\":\"" << step_name(r.reached)
              << "\",\"error_code\":" << r.error_code << ",\"error\":\"" << esc(r.error) << "\",\"channel\":\""
              << esc(r.channel) << "\",\"key_source\":\"" << esc(r.key_source) << "\",\"chip_vendor\":\""
              << esc(r.chip_vendor) << "\",\"chip_refused\":" << (r.chip_refused ? "true" : "false") << "}\n";
  } else if (r.done) {
    std::cout << "personalized " << d << ": chip " << r.chip_id << " IMEI " << r.imei << " published (channel "
              << r.channel << ", key source " << r.key_source << ")\n";
  }
  if (!r.done) {
    core::log::say("keyline-station: " + d + ": error " + std::to_string(r.error_code) + ": " + r.error, r.chip_id, r.imei);
    (r.in_outbox ? t.waiting : is_refusal(r.error_code) ? t.refused : t.failed)++;
  }
}

// A reader without a card (or with a mute one) is waited for, saying so on stderr. Returns the
// error that ends the wait: none (a card that answers is in), no card within `wait_s`, or the reader
// removed.
std::optional<core::IoError> wait_for_card(core::pcsc::Context& ctx, const std::string& reader, int wait_s) {
  const std::vector<std::string> one{reader};
  auto st = ctx.states(one);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait_s);
  bool said = false;
  while (!st[0].present || st[0].mute) {
    if (st[0].gone)
      return core::IoError(core::ErrorCode::PcscReaderRemoved, "reader \"" + reader + "\" was removed");
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero())
      return core::IoError(st[0].mute ? core::ErrorCode::PcscCardMute : core::ErrorCode::Timeout,
                           st[0].mute ? "the card in reader \"" + reader + "\" does not answer (mute)"
                                      : "no card put into reader \"" + reader + "\" within " +
                                            std::to_string(wait_s) + " s (--card-wait)");
    if (!said)
      std::cerr << "keyline-station: " << (st[0].mute ? "the card in reader \"" + reader + "\" does not answer; " : "")
                << "waiting for a card in reader \"" << reader << "\" (up to " << wait_s << " s, --card-wait)\n";
    said = true;
    st = ctx.wait(one, st, std::min(std::chrono::duration_cast<std::chrono::milliseconds>(left),
                                    std::chrono::milliseconds(1000)));
  }
  return std::nullopt;
}

void personalize_readers(const PersonalizeRequest& request, core::pcsc::Context& ctx,
                         const std::vector<std::string>& readers, Personalizer& p, core::pq::Connection& db,
                         PersonalizeTally& t) {
  for (const auto& reader : readers) {
    const std::string address = core::kPcscScheme + reader;
    if (const auto e = wait_for_card(ctx, reader, request.card_wait_s)) {
      DeviceResult r;
      r.error_code = e->numeric();
      r.error = e->what();
      report_device(address, r, request.json, t);
      continue;
    }
    report_device(address, p.personalize(address, db), request.json, t);
  }
}

}  // namespace

int cmd_personalize(const StationConfig& config, const PersonalizeRequest& request) {
  if (request.devices.empty() && request.readers.empty())
    throw core::ConfigError(core::ErrorCode::Usage, "no devices: give --device HOST:PORT or --reader PATTERN");
  // pcscd away (1421) or no reader matching (1422) is said before anything is opened or claimed.
  std::unique_ptr<core::pcsc::Context> ctx;
  std::vector<std::string> readers;
  if (!request.readers.empty()) {
    ctx = std::make_unique<core::pcsc::Context>();
    readers = ctx->require_readers(request.readers);
  }
  auto db = open_db(config);
  auto keys = StationKeys::open(config, 4);
  std::unique_ptr<Publisher> publisher;
  if (!config.backupdb_url.empty()) publisher = std::make_unique<Publisher>(config);
  Personalizer p(config, keys, publisher.get());
  PersonalizeTally t;
  for (const auto& d : request.devices) report_device(d, p.personalize(d, db), request.json, t);
  if (ctx) personalize_readers(request, *ctx, readers, p, db, t);
  // docs/operations.md: 5 when a peer answered "no" (device, public DB, another station), 4 when the only
  // trouble is a public DB that did not answer (the outbox holds the records), 1 for anything else.
  if (t.failed > 0) return core::exit_code::failure;
  if (t.refused > 0) return core::exit_code::refused;
  return t.waiting > 0 ? core::exit_code::unavailable : core::exit_code::ok;
}

int cmd_publish(const StationConfig& config, bool retry_refused_too, const std::string& chip) {
  if (!chip.empty() && !core::ChipId::is_valid(chip))
    throw core::ConfigError(core::ErrorCode::Usage, "--chip wants a chip ID: 20 upper-case hex digits");
  auto db = open_db(config);
  if (retry_refused_too) {
    const long n = retry_refused(db, chip);
    std::cout << "publish: " << n << " parked record(s) due again\n";
  }
  Publisher publisher(config);
  const auto d = drain_outbox(db, publisher);
  const auto parked = db.exec("SELECT count(*) FROM journal.outbox WHERE published_at IS NULL AND refused_at IS NOT NULL")
                          .int64(0, 0);
  std::cout << "publish: " << d.published << " records published, " << d.pending << " still waiting, " << d.refused
            << " refused now; " << parked << " parked in all\n";
  if (parked > 0)
    std::cout << "  parked records were refused for good (keyline-station status shows why); after fixing the cause,"
                 " `keyline-station publish --retry-refused` sends them again\n";
  if (d.pending > 0) return core::exit_code::unavailable;
  return d.refused > 0 ? core::exit_code::refused : 0;
}

int cmd_status(const StationConfig& config, bool json) {
  auto db = open_db(config);
  const auto r = db.exec(
      "SELECT state, count(*) FROM journal.device GROUP BY state ORDER BY state");
  const auto ob = db.exec(
      "SELECT count(*) FILTER (WHERE published_at IS NULL AND refused_at IS NULL),"
      " count(*) FILTER (WHERE published_at IS NOT NULL),"
      " coalesce(max(last_error) FILTER (WHERE published_at IS NULL AND refused_at IS NULL), ''),"
      " count(*) FILTER (WHERE published_at IS NULL AND refused_at IS NOT NULL) FROM journal.outbox");
  // The parked records, newest first: chip, IMEI and the public DB's reason.
  const auto parked = db.exec(
      "SELECT o.chip_id, d.imei, coalesce(o.last_error, '') FROM journal.outbox o JOIN journal.device d ON d.id = o.device_id"
      " WHERE o.published_at IS NULL AND o.refused_at IS NOT NULL ORDER BY o.refused_at DESC LIMIT 20");
  // Published, not yet proved in a log checkpoint (docs/transparency.md "Clients"): the backlog
  // `outbox check-log` works off; its oldest is how long the log has kept a record out of a checkpoint.
  const auto lg = db.exec(
      "SELECT count(*) FILTER (WHERE log_proof IS NULL),"
      " coalesce(to_char(min(published_at) FILTER (WHERE log_proof IS NULL) AT TIME ZONE 'UTC',"
      " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), ''),"
      " coalesce(extract(epoch FROM now() - min(published_at) FILTER (WHERE log_proof IS NULL))::bigint, 0),"
      " count(*) FILTER (WHERE log_proof IS NOT NULL) FROM journal.outbox WHERE published_at IS NOT NULL");
  const auto s = pool_status(db);
  if (json) {
    std::cout << "{\"journal\":{";
    for (int i = 0; i < r.rows(); ++i) std::cout << (i ? "," : "") << "\"" << r.text(i, 0) << "\":" << r.int64(i, 1);
    std::cout << "},\"outbox\":{\"pending\":" << ob.int64(0, 0) << ",\"refused\":" << ob.int64(0, 3)
              << ",\"published\":" << ob.int64(0, 1) << "},\"log\":{\"not_in_checkpoint\":" << lg.int64(0, 0)
              << ",\"oldest_not_in_checkpoint\":" << (lg.text(0, 1).empty() ? "null" : "\"" + lg.text(0, 1) + "\"")
              << ",\"oldest_age_s\":" << lg.int64(0, 2) << ",\"proved\":" << lg.int64(0, 3) << "},\"pool\":{\"imeis\":" << s.imeis << ",\"keys\":" << s.keys << "}}\n";
  } else {
    std::cout << "journal (devices by state):\n";
    if (r.empty()) std::cout << "  (empty)\n";
    for (int i = 0; i < r.rows(); ++i) std::cout << "  " << r.text(i, 0) << ": " << r.int64(i, 1) << "\n";
    std::cout << "outbox: " << ob.int64(0, 0) << " waiting, " << ob.int64(0, 3) << " refused (parked), "
              << ob.int64(0, 1) << " published\n";
    if (!ob.text(0, 2).empty()) std::cout << "  last error: " << ob.text(0, 2) << "\n";
    for (int i = 0; i < parked.rows(); ++i)
      std::cout << "  refused: chip " << parked.text(i, 0) << " IMEI " << parked.text(i, 1) << ": " << parked.text(i, 2)
                << "\n";
    if (ob.int64(0, 3) > 0)
      std::cout << "  a refused record waits for an operator: fix the cause, then `keyline-station publish "
                   "--retry-refused`\n";
    std::cout << "log: " << lg.int64(0, 0) << " published but not yet in a checkpoint";
    if (lg.int64(0, 0) > 0) std::cout << " (oldest " << lg.text(0, 1) << ", " << lg.int64(0, 2) << " s ago)";
    std::cout << ", " << lg.int64(0, 3) << " proved (keyline-station outbox check-log)\n";
    std::cout << "pool: " << s.imeis << " IMEIs, " << s.keys << " key sets\n";
  }
  return 0;
}

int cmd_run(const StationConfig& config, const RunRequest& request) {
  LineProfile profile;
  if (!request.profile.empty()) profile = load_profile(request.profile);
  for (const auto& d : request.devices) profile.devices.push_back({d, ""});
  if (!request.fleet_file.empty()) {
    auto more = read_fleet_file(request.fleet_file);
    profile.devices.insert(profile.devices.end(), more.begin(), more.end());
  }
  if (!request.fleet_ports.empty()) {
    auto more = fleet_ports(request.fleet_ports);
    profile.devices.insert(profile.devices.end(), more.begin(), more.end());
  }
  profile.readers = request.readers;
  if (!profile.readers.empty() && !profile.devices.empty())
    throw core::ConfigError(core::ErrorCode::Usage,
                            "a line runs on readers (--reader) or on TCP fixtures (--device, --fleet, --fleet-ports, "
                            "a profile's devices), not both");
  if (profile.devices.empty() && profile.readers.empty())
    throw core::ConfigError(core::ErrorCode::Usage,
                            "no devices: give --profile, --fleet, --fleet-ports, --device or --reader");
  if (request.concurrency > 0) profile.concurrency = request.concurrency;
  LineOptions opt;
  opt.count = request.count;
  opt.publish_wait_ms = request.publish_wait_s * 1000;
  opt.db_wait_ms = request.db_wait_s * 1000;
  opt.idle_exit_ms = request.idle_exit_s * 1000;
  opt.ops_listen = request.ops_listen;
  opt.status_listen = request.status_listen;
  opt.terminal = request.progress == "tty" || (request.progress == "auto" && ::isatty(1));
  opt.secondary_token = request.secondary_token;
  opt.secondary_module = request.secondary_module;
  opt.secondary_pin_file = request.secondary_pin_file;
  opt.secondary_pki_dir = request.secondary_pki;
  install_line_signal_handlers();
  const auto s = run_line(config, profile, opt, std::cout);
  print_summary(s, std::cout);
  if (!request.summary_json.empty()) {
    std::ofstream f(request.summary_json, std::ios::trunc);
    f << summary_json(s) << "\n";
    if (!f) throw core::ConfigError(core::ErrorCode::Config, "cannot write " + request.summary_json);
  }
  if (s.failed > 0) return core::exit_code::failure;
  // Exit 4: everything else went through, but some records still wait for the public DB.
  return s.publishing > 0 ? core::exit_code::unavailable : core::exit_code::ok;
}

int cmd_bench_floor(const StationConfig& config, std::int64_t devices, int threads) {
  if (devices <= 0) throw core::ConfigError(core::ErrorCode::Usage, "--devices must be positive");
  std::cout << "floor_devices_per_s " << crypto_floor(config, devices, threads) << "\n";
  return 0;
}

}  // namespace keyline::station
