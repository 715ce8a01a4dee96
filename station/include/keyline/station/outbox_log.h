// The station's side of the public DB's transparency log (issue #18, docs/transparency.md
// "Clients"): each outbox row keeps its leaf index and, once the record is in a checkpoint signed by
// the pinned log key, its verified inclusion proof. `keyline-station outbox check-log` fills them in.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "keyline/core/pq.h"
#include "keyline/station/config.h"

namespace keyline::station {

// Writes the leaf indexes the public DB answered to publishes (chip ID, leaf index), one statement.
// A row that has one already keeps it (the public DB never moves a record).
void store_leaf_indexes(core::pq::Connection& db, const std::vector<std::pair<std::string, std::uint64_t>>& leaves);

struct LogCheckOptions {
  std::string log_key;       // the log's verifier key (C2SP vkey), or
  std::string log_key_file;  // a file holding it
  int limit = 1000;          // rows checked in one run
  int rate = 50;             // requests per second at most (the public DB serves lines too)
  int max_wait_s = 3600;     // a record published longer ago and still not in a checkpoint is an alarm
};

struct LogCheckResult {
  long proved = 0;       // in a checkpoint now, proof verified and stored
  long waiting = 0;      // published, not yet in a checkpoint
  long failed = 0;       // the log does not prove the record the station published: an alarm
  bool forked = false;   // the checkpoint does not extend the one stored proofs hold: nothing checked
  std::uint64_t tree_size = 0;
};

// One pass: the latest checkpoint (opened with the pinned key), checked to extend the newest one a
// stored proof holds (a consistency proof; a fork is an alarm and ends the pass), then every published row without a
// proof (never asked about first, then asked about longest ago, up to limit): its inclusion proof at that checkpoint, for the leaf computed
// from the row's chip, IMEI and record hash. Lines for the failures go to `out`.
LogCheckResult check_outbox_log(const StationConfig& config, const LogCheckOptions& options, std::ostream& out);

// `keyline-station outbox check-log`: exit 0 when nothing failed (records may still wait), 3 when
// the log does not prove a record the station published (a record called not integrated at a
// leaf the checkpoint holds, or waiting past max_wait_s, included), 5 when the log forked.
int cmd_outbox_check_log(const StationConfig& config, const LogCheckOptions& options);

}  // namespace keyline::station
