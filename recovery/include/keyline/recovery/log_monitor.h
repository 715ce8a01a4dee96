// `keyline-recovery log monitor` (issue #18, docs/recovery.md section 8): a monitor anyone can run
// against a public DB or a mirror. It opens the latest checkpoint with the pinned log key, checks
// that it extends the last one seen (the state file, as restore does), recomputes the whole tree
// from the served tiles and entry bundles (core::tlog::verify_tiles) and compares the root, and
// reads every entry (core::parse_record_leaf) to report a chip ID or IMEI logged twice.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "keyline/recovery/log_check.h"
#include "keyline/recovery/recovery.h"

namespace keyline::recovery {

struct MonitorOptions {
  DbOptions db;
  LogOptions log;         // log.skip is not used: a monitor always checks
  bool entries = true;    // also read the entry bundles (and check level 0 against them)
};

struct MonitorReport {
  std::string origin;
  LogHead head;                    // the checkpoint verified now
  std::optional<LogHead> seen;     // the one the state file held
  std::uint64_t entries_read = 0;
  std::vector<std::string> duplicates;  // "chip ID X at leaves 3 and 9", "IMEI ... at leaves ..."
};

// Throws LogNotVerified (checkpoint not under the key, a tile or entry that does not parse or does
// not give the checkpoint's root), LogFork, LogStateBad, DbUnavailable. The state file is written
// once the tree verified, duplicates or not (they are a finding about the content, not the tree).
MonitorReport monitor_log(const MonitorOptions& options, std::ostream* progress);

// "key value" lines; duplicates each on a line of its own.
std::string format_monitor_report(const MonitorReport& r);

}  // namespace keyline::recovery
