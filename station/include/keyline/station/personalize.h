// Personalizing one device: the secure processing point's steps 3-8 of seed 002.
//   1 read the device (SELECT, status, CPLC): a personalized device is refused before any claim
//   2 claim an IMEI (and keys) in one statement that deletes the pool rows and writes the journal
//   3 derive the communication key in the HSM, lint and sign the identity and transport certificates
//     with the Device CA key on the token (audit rows before and after each signature)
//   4 STORE DATA the package, GET DATA the backup, run the restore drill and compare digests
//   5 one transaction: journal -> backed_up (wrapped keys wiped), secret DB row, outbox row
//   6 publish to the public DB; the device is done only once the public DB has the record
// A failure names the chip, the step and the reason. Before STORE DATA succeeds the claim is voided
// (the IMEI is never given to another device); after it, the journal keeps the device's state so a
// later run resumes (publish from the outbox).
// Each step is one function of the flow (station/src/flow.h); route() below is the journal's state
// machine: which steps a chip still needs. The device is reached through a core::DeviceChannel, the
// keys come from a KeySource (key_source.h).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "keyline/core/device_channel.h"
#include "keyline/core/device_link.h"
#include "keyline/core/pq.h"
#include "keyline/station/config.h"
#include "keyline/core/pq_group.h"
#include "keyline/station/key_source.h"
#include "keyline/station/keys.h"
#include "keyline/station/publisher.h"

namespace keyline::station {

// Attest runs after Claim for --key-source device only (GENERATE KEY, docs/station.md).
enum class Step { Connect, ReadDevice, Claim, Attest, Issue, Store, Backup, Record, Publish, Done };
const char* step_name(Step s) noexcept;

// A chip's live journal row (journal.device.state; 'stored', written by earlier versions, resumes
// like 'issued'), None without one. Throws Error(JournalConflict) for a state it does not know.
enum class JournalState { None, Claimed, Issued, BackedUp, Published };
JournalState parse_journal_state(const std::string& state);

// Why a device is refused right after read-device, before anything is claimed.
enum class Refusal {
  None,
  Personalized,           // personalized and not left half-done by this station (4011)
  PersonalizedVoidClaim,  // the same, and the chip's 'claimed' row is voided first
  LostFlash,              // blank, yet the journal says its record is kept: restore it (4011)
};

// The journal's state machine (docs/station.md, "Journal states"), the one place that says which
// steps follow which state: after read-device, a chip's journal state and the device's lifecycle
// give either a refusal or the steps to run, in order. Claim is always first: a new claim, or the
// row's own IMEI (and, for a blank device, its keys again).
struct Route {
  Refusal refusal = Refusal::None;
  std::vector<Step> steps;
};
const Route& route(JournalState state, bool personalized);

struct DeviceResult {
  std::string endpoint;
  std::string chip_id;
  std::string imei;
  Step reached = Step::Connect;
  bool done = false;          // published: the public DB has the record
  bool in_outbox = false;     // everything but the publication; the outbox will deliver it
  std::string identity_cert_pem;
  std::string error;          // "chip <id>: step <step>: <reason>" when not done
  int error_code = 0;
  std::int64_t journal_id = 0;  // journal.device id, once claimed
  std::string record_json;      // with in_outbox: the record this call wrote to the outbox, for a publisher
  std::string channel;          // "scp11a" or "plain" (docs/station.md, "The channel")
  std::string key_source;       // "generate", "pool" or "device"
  std::string chip_vendor;      // scp11a: the vendor CA's CN the chip's certificates chain to
  bool chip_refused = false;    // not a genuine chip (ChipNotGenuine, ChipIdMismatch): nothing claimed
};

// Where a personalization gets its database connection: the caller's own, or one leased from a pool
// for each statement (a line's workers spend most of a device waiting on the device, so 256 workers
// need not hold 256 PostgreSQL sessions). With a GroupCommit, the journal's one-statement steps of
// concurrent devices share transactions.
class JournalDb {
 public:
  explicit JournalDb(core::pq::Connection& conn) : m_conn(&conn) {}
  explicit JournalDb(core::pq::Pool& pool, core::pq::GroupCommit* group = nullptr) : m_pool(&pool), m_group(group) {}
  template <typename F>
  auto with(F&& f) -> decltype(f(std::declval<core::pq::Connection&>())) {
    if (m_conn) return f(*m_conn);
    auto lease = m_pool->acquire();
    return f(*lease);
  }
  // One prepared statement that is a whole step on its own (its own transaction when alone).
  core::pq::Result step(const std::string& sql, core::pq::Params params) {
    if (m_group) return m_group->exec(sql, std::move(params));
    return with([&](core::pq::Connection& c) { return c.exec_prepared(sql, params); });
  }

 private:
  core::pq::Connection* m_conn = nullptr;
  core::pq::Pool* m_pool = nullptr;
  core::pq::GroupCommit* m_group = nullptr;
};

// Fault hook for crash tests: called at each step boundary with the step just reached; a test makes
// it abort the process there. Only the test build's keyline-station-faulty sets one (--crash-at or
// KEYLINE_STATION_CRASH_AT=<step>, tests/support/station_faulty_main.cpp); the operator's
// keyline-station never does.
using StepHook = std::function<void(Step, const std::string& chip_id)>;

class Personalizer {
 public:
  // Throws ConfigError(Usage) as check_personalization_config does, ConfigError(Config) for a vendor
  // list that does not load, errc::KeysMissing for scp11a without an OCE certificate (keys init).
  Personalizer(const StationConfig& config, StationKeys& keys, Publisher* publisher);

  // Runs all steps for the device at `address` ("HOST:PORT" or "pcsc:READER", core::open_device_channel)
  // on the caller's thread with its own DB connection. Never throws for a device problem: the result
  // says what happened.
  DeviceResult personalize(const std::string& address, core::pq::Connection& db);
  // The same with the journal where the caller keeps it (a line: a pool and its group commit).
  DeviceResult personalize(const std::string& address, JournalDb& db);
  // The same on a channel the caller holds (a line's reader worker); connected here when it is not.
  // The channel stays open. May be called from several threads at once, each with its own channel.
  DeviceResult personalize(core::DeviceChannel& channel, JournalDb& db);

  void set_step_hook(StepHook hook) { m_hook = std::move(hook); }
  // Application items (DGIs 0F01-0FFF) from the line profile, stored into every device.
  void set_app_items(std::vector<std::pair<std::uint16_t, core::Bytes>> items) { m_app_items = std::move(items); }
  // Another Device CA whose certificates a resumed device may hold (a line's failover: the primary's),
  // so its record carries the CA that issued its identity certificate.
  void add_other_issuer(const Botan::X509_Certificate& ca) { m_other_issuers.push_back(ca); }
  // The Device CA certificate that issued `identity_der`: this station's, or one added above.
  const Botan::X509_Certificate& issuer_of(const core::Bytes& identity_der) const;
  // Where the flow's notes go (one line each, no secrets); default: stderr with "keyline-station: ".
  void set_log(std::function<void(const std::string&)> log) { m_log = std::move(log); }

  // The channel settings of the station (chaining chunk for extended or short APDUs): what a caller
  // that opens its own channel for personalize(channel, db) should pass to core::open_device_channel.
  core::ChannelOptions channel_options() const;

 private:
  void step(Step s, const std::string& chip_id);
  // The flow's fall back to short APDUs: said once per channel address, however many devices it
  // concerns (called by the flow, from any worker thread).
  void note_short_apdus(const std::string& address, const std::string& why);
  const StationConfig& m_config;
  StationKeys& m_keys;
  Publisher* m_publisher;
  StepHook m_hook;
  std::vector<std::pair<std::uint16_t, core::Bytes>> m_app_items;
  std::function<void(const std::string&)> m_log;
  std::mutex m_said_mutex;
  std::set<std::string> m_said_short;  // addresses whose fall back to short APDUs was logged
  std::vector<Botan::X509_Certificate> m_vendors;  // --chip-vendors, loaded once (scp11a)
  std::vector<Botan::X509_Certificate> m_other_issuers;

  friend class Flow;
};

// The public DB holds the record: outbox row published and journal row 'published', in one statement
// (for any number of devices: one commit for a batch).
void mark_published(core::pq::Connection& db, const std::string& chip_id, std::int64_t device_id);
void mark_published(core::pq::Connection& db, const std::vector<std::pair<std::string, std::int64_t>>& published);

// A publication that failed: the outbox row backs off (250 ms, doubling to 30 s between attempts) or,
// when the public DB refused it for good (PublishOutcome::Refused), is parked (refused_at) until an operator
// runs `publish --retry-refused`. `detail` goes to last_error (cut to 500 characters).
void note_publish_failure(core::pq::Connection& db, const std::string& chip_id, bool refused, const std::string& detail);

// Parked records become due again: all of them, or the one of `chip_id`. Returns how many.
long retry_refused(core::pq::Connection& db, const std::string& chip_id = {});

struct DrainResult {
  int published = 0;
  int pending = 0;  // unreachable or temporarily refused: still due for a later attempt
  int refused = 0;  // refused for good by this drain: parked
};
// Sends every due, unparked outbox record (oldest first) once.
DrainResult drain_outbox(core::pq::Connection& db, Publisher& publisher, int limit = 1000);

}  // namespace keyline::station
