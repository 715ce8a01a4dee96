// `keyline-backupdb monitor`: follows the transparency log of any public DB or mirror (issue #18,
// docs/transparency.md, "Monitor"). Each run: the latest checkpoint under the pinned log key, its
// consistency with the last one seen, the tree recomputed from the entry bundles (only the entries
// new since the last run: the right edge of the verified tree is kept in the state directory), and
// every new entry parsed and checked: a chip ID or IMEI logged twice, a record the API serves for that
// chip whose hash is not the entry's, or one that does not chain to the manufacturer root (core's
// record validation, as the public DB validates on publish). Each finding is one JSON line.
// Written on core's tlog library (core/merkle.h, checkpoint.h, tlog_tiles.h, record_leaf.h), not on
// recovery's monitor: a part links no other part, and this one also fetches and validates records.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace keyline::backupdb {

struct MonitorConfig {
  std::string url, ca;                    // the public DB or mirror (its CA for https)
  std::string log_key, log_key_file;      // the log's verifier key (exactly one)
  std::string state_dir;                  // --state DIR
  std::vector<std::string> trust;         // manufacturer root(s), PEM
  bool once = false;
  bool recheck = false;                   // fetch the records of earlier entries again too
  unsigned interval_s = 60;
};

// Exit codes: 0 nothing found; 3 a finding about entries or records; 5 the log forked (a checkpoint
// inconsistent with the last one seen, or tiles/entries that do not give its root).
namespace monitor_exit {
constexpr int ok = 0;
constexpr int record_findings = 3;
constexpr int log_fork = 5;
}  // namespace monitor_exit

struct MonitorRun {
  std::uint64_t previous_size = 0;
  std::uint64_t size = 0;
  std::uint64_t entries_checked = 0;
  std::vector<std::string> findings;  // JSON lines
  bool fork = false;
  int exit_code() const;
};

// One pass; findings are also written to `out` as they are found, and the state advances only to a
// checkpoint whose tree was verified (a fork leaves it where it was, so every run reports it again).
MonitorRun monitor_once(const MonitorConfig& cfg, std::ostream& out);
// --once: one pass; else passes every interval_s until SIGINT/SIGTERM, returning the worst exit code.
int monitor(const MonitorConfig& cfg);

}  // namespace keyline::backupdb
