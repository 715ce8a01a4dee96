// The line at scale (issue #7): many devices at once, a journal that survives kill -9, publication
// through a durable outbox that drains in the background, progress for the operator.
//
//   workers (profile concurrency)  each: own DB connection, takes the next device, Personalizer::personalize
//                                  up to the outbox row (a slow public DB never holds a fixture)
//   publishing lanes (2-8)         each: one kept-alive mutual-TLS connection; fresh records first, one lane
//                                  sweeps the outbox with exponential backoff
//   progress (the calling thread)  a \r line on a terminal, a plain line every few seconds otherwise
//   watcher (a line on readers)    waits on the PC/SC readers (SCardGetStatusChange) and hands each card put
//                                  in to the workers, one device at a time per reader (docs/line.md)
//
// A device counts as done only once the public DB holds its record (docs/design.md section 9, invariant 4):
// a device whose record waits in the outbox is "publishing" until the drainer delivers it.
#pragma once

#include <atomic>
#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "keyline/core/bytes.h"
#include "keyline/station/config.h"

namespace keyline::station {

struct LineDevice {
  std::string endpoint;  // HOST:PORT of the fixture, or "pcsc:READER" (core::open_device_channel)
  std::string chip_id;   // when known (fleet file): lets a restart skip devices already published
};

// The line profile (JSON; see docs/line.md).
struct LineProfile {
  std::vector<LineDevice> devices;
  // PC/SC reader patterns (core::pcsc::match_readers; "all": every reader). Not empty: a line on
  // readers, which takes the cards put in and ends on a stop signal, --count or --idle-exit.
  std::vector<std::string> readers;
  int concurrency = 8;
  std::string key_source;        // empty: the station's setting
  std::string tac;               // TAC range the pool is topped up from ("" = never top up)
  std::int64_t pool_low_water = 0;  // top up when fewer IMEIs than this wait in the pool
  std::int64_t pool_refill = 0;     // how many IMEIs one top-up adds
  std::vector<std::pair<std::uint16_t, core::Bytes>> app_items;  // DGIs 0F01-0FFF for every device
};

// Reads a profile file. Throws ConfigError naming the bad field.
LineProfile load_profile(const std::string& path);
// The "listening HOST:PORT CHIPID DIR" lines printed by `keyline-device serve --fleet`.
std::vector<LineDevice> read_fleet_file(const std::string& path);
// "HOST:BASE:COUNT" or "BASE:COUNT" (host 127.0.0.1): COUNT consecutive ports.
std::vector<LineDevice> fleet_ports(const std::string& spec);

struct LineOptions {
  std::int64_t count = 0;        // stop after this many devices are done (0: every device of the list)
  int progress_every_ms = 2000;  // plain progress line period when stdout is not a terminal
  bool terminal = false;         // \r-updated progress line
  int device_attempts = 3;       // tries per device when the link drops (claims stay with the chip)
  int publish_wait_ms = 60000;   // after the last device, how long to wait for the outbox to drain
  int db_wait_ms = 300000;       // how long devices wait for an unreachable station database before failing
  int idle_exit_ms = 0;          // a line on readers: end after this long with no card to do (0: never)
  int reader_retry_ms = 1000;    // a line on readers: pause after a dropped link before the same card again
  std::string ops_listen;        // --ops-listen: /metrics and /healthz (docs/station.md); empty: none
  std::string status_listen;     // --status-listen: the line page; empty: none
  // Failover (docs/custody.md "Failover"): a secondary token, a station of its own under the same root
  // (its PKI directory: Device CA, station TLS certificate, root.pem) holding the mirrored master. Empty
  // secondary_token: no failover. An empty module or PIN file is the primary's.
  std::string secondary_token;
  std::string secondary_module;
  std::string secondary_pin_file;
  std::string secondary_pki_dir;
};

// Which token personalized how many devices (a line with a secondary token).
struct TokenSummary {
  std::string role;        // "primary" or "secondary"
  std::string token;       // the token label
  std::string station_id;  // the station identity it signs and publishes as
  std::int64_t devices = 0;  // personalized by it (record kept: published or in the outbox)
};

// One reader's line in the progress and the summary.
struct ReaderSummary {
  std::string reader;
  std::int64_t taken = 0;   // cards handed to a worker (a card whose link dropped and came back: twice)
  std::int64_t done = 0;    // published (counted when the public DB holds the record)
  std::int64_t failed = 0;
  std::string state;        // "empty", "queued", "busy", "done, card in", "failed, card in", "mute", "removed"
};

struct LineSummary {
  std::int64_t done = 0;          // published (this run, or found already published)
  std::int64_t already_done = 0;  // of which were published before this run
  std::int64_t failed = 0;
  std::int64_t chips_refused = 0;  // of failed: chips refused as not genuine before any claim (scp11a)
  std::string channel;             // "scp11a" or "plain": every device of the run
  std::string key_source;          // "generate", "pool" or "device"
  std::int64_t publishing = 0;    // records still in the outbox at the end
  std::int64_t refused = 0;       // records the public DB refused for good (parked; counted in failed)
  std::int64_t skipped = 0;       // not started (stop signal or --count reached)
  std::int64_t backlog = 0;       // unpublished outbox rows in the database (all stations)
  std::int64_t unfinished = 0;    // this station's journal rows in claimed/issued/stored: their IMEIs stay
                                  // with their chips and resume when the devices come back
  std::int64_t journal_steps = 0;    // one-statement journal steps of the workers
  std::int64_t journal_commits = 0;  // transactions they took (group commit: fewer than steps)
  double seconds = 0;
  std::vector<std::string> failures;  // one line per failed device
  std::string halted;  // why the line stopped starting new devices early (empty: it did not)
  std::vector<ReaderSummary> readers;  // a line on readers: one per reader
  // A line with a secondary token: each token's devices; when the line switched (UTC, empty: it did
  // not) and how many devices were published before; how many probes of the primary ran.
  std::vector<TokenSummary> tokens;
  std::string failover_at;
  std::int64_t failover_after_devices = 0;
  std::int64_t failover_probes = 0;
};

// Runs the line. Returns when every device is handled, --count is reached, or a stop was requested
// (in-flight devices finish, nothing new starts; the drainer gets a short grace period).
LineSummary run_line(const StationConfig& config, const LineProfile& profile, const LineOptions& options,
                     std::ostream& out);

// Async-signal-safe: asks a running line to drain and stop (SIGINT/SIGTERM handler).
void request_line_stop() noexcept;
// Installs SIGINT/SIGTERM handlers that call request_line_stop.
void install_line_signal_handlers();

void print_summary(const LineSummary& s, std::ostream& out);
// The failover lines of the summary (print_summary calls it; nothing without a secondary token).
void print_failover_summary(const LineSummary& s, std::ostream& out);
// The summary as one JSON object (`run --summary-json FILE`), "failover" included when configured.
std::string summary_json(const LineSummary& s);

// The benchmark's crypto floor: devices/s of one process doing per device only the cryptography
// (P-256 and X25519 key generation, the two certificate signatures on the token, data package
// encoding and the device's AES-GCM sealing) on `threads` threads.
double crypto_floor(const StationConfig& config, std::int64_t devices, int threads);

}  // namespace keyline::station
