// The online log check of `restore` and `fetch` (issue #18, docs/recovery.md section 7): before
// anything is written, the record must be in the public DB's transparency log (an inclusion proof
// against a checkpoint signed by the pinned log key), and that checkpoint must extend the last one
// this tool saw (a consistency proof, RFC 9162 section 2.1.4). Leaf hashes are computed here from
// the record, never taken from the server.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "keyline/core/checkpoint.h"
#include "keyline/core/http.h"
#include "keyline/core/merkle.h"
#include "keyline/core/record.h"
#include "keyline/core/signed_note.h"

namespace keyline::recovery {

struct DbOptions;

struct LogOptions {
  std::string log_key;       // the log's verifier key (C2SP signed-note vkey text), or
  std::string log_key_file;  // a file holding it (one line)
  std::string state_file;    // empty: default_state_path()
  bool skip = false;         // --no-log-check: nothing is checked (a loud warning is printed)
  // A record published moments ago is in a checkpoint within seconds (docs/transparency.md): wait
  // this long for it, asking again every second, before LogNotIntegrated.
  std::chrono::milliseconds integration_wait{10000};
  // --witness-key VKEY (type 0x04, repeatable) and --witnesses N: the checkpoint must carry N valid
  // cosignatures by distinct listed witnesses (docs/transparency.md, "Witness"); 0 asks for none.
  std::vector<std::string> witness_keys;
  unsigned witnesses = 0;
};

// Throws ConfigError(Usage) when N exceeds the keys given or a key does not parse, and
// Error(LogNotWitnessed) when the checkpoint note has fewer than N valid cosignatures by them (or a
// listed witness's line fails to verify).
void check_witnessed(const LogOptions& options, const std::string& checkpoint_note);

// What the tool last saw of a log (one origin): its size and root.
struct LogHead {
  std::uint64_t size = 0;
  core::merkle::Hash root{};
};
using LogState = std::map<std::string, LogHead>;  // by origin

// $XDG_STATE_HOME/keyline/log-state, or ~/.local/state/keyline/log-state (XDG Base Directory 0.8).
std::string default_state_path();

// The pinned key from --log-key or --log-key-file (exactly one). Throws ConfigError(Usage) for
// none or both, ConfigError(Config) for an unreadable file or a text that is no Ed25519 vkey.
core::note::Ed25519Verifier load_log_key(const LogOptions& options);

// The state file: one line per origin, "<size> <base64 root> <origin>" (the origin last, since it
// may hold spaces). A missing file is an empty state; a malformed one throws Error(LogStateBad).
LogState read_log_state(const std::string& path);
std::string format_log_state(const LogState& state);
// Temporary file, fsync, rename; creates the directory. Throws IoError(Io).
void write_log_state(const std::string& path, const LogState& state);

// The consistency decision between what was seen and a newly verified checkpoint. Throws
// Error(LogFork) naming both sizes and roots when `seen` is larger, or has another root at the same
// size, or when the proof (for seen.size < next.size) does not verify.
void check_consistent(const std::string& origin, const LogHead& seen, const LogHead& next,
                      const std::vector<core::Bytes>& proof);

// The answer of GET /v1/records/{chip}/proof, strictly parsed. Throws Error(LogNotVerified).
struct InclusionAnswer {
  std::uint64_t leaf_index = 0;
  std::uint64_t tree_size = 0;
  core::Bytes leaf_hash;
  std::vector<core::Bytes> proof;
};
InclusionAnswer parse_inclusion_answer(const std::string& json);
// The answer of GET /v1/log/consistency. Throws Error(LogNotVerified).
std::vector<core::Bytes> parse_consistency_answer(const std::string& json, std::uint64_t size1, std::uint64_t size2);

// The steps, public for the monitor (log_monitor.h):
// One GET of the log API; reachability errors as fetch_record_json's (DbUnavailable), an answer past
// the client's cap is LogNotVerified. HTTP statuses below 500 (but 429) are returned.
core::http::Response log_get(core::http::Client& client, const DbOptions& db, const std::string& path);
// A checkpoint note opened with the pinned key (its name is the origin). Throws LogNotVerified.
core::tlog::Checkpoint open_log_checkpoint(const std::string& note, const core::note::Ed25519Verifier& key);
struct SignedCheckpoint {
  core::tlog::Checkpoint checkpoint;
  std::string note;  // the signed note as served
};
// GET /v1/log/checkpoint, opened as above.
SignedCheckpoint fetch_log_checkpoint(core::http::Client& client, const DbOptions& db,
                                      const core::note::Ed25519Verifier& key);
// check_consistent, with the consistency proof fetched when the tree grew. Throws LogFork.
void check_log_extends(core::http::Client& client, const DbOptions& db, const std::string& origin,
                       const LogHead& seen, const LogHead& next);

// What proves a record is in the log: the signed checkpoint and the inclusion proof against it.
struct LogEvidence {
  std::string checkpoint_note;
  InclusionAnswer proof;
};

// The whole check against the public DB: checkpoint, inclusion of `record`, consistency with the
// state file, then the state file written. Throws Error(LogNotVerified | LogNotIntegrated | LogFork
// | LogStateBad) or the DB errors of fetch_record_json. With options.skip, prints the warning and
// returns nothing.
std::optional<LogEvidence> check_record_in_log(const DbOptions& db, const LogOptions& options, const core::Record& record,
                                               std::ostream* progress);

// The offline bundle `fetch` writes: the record JSON as served, with a "log" member holding the
// evidence ({"leaf_index","tree_size","leaf_hash","proof","checkpoint"}); core::Record::from_json
// ignores it, so the bundle is still the record.
std::string bundle_with_log(const std::string& record_json, const LogEvidence& evidence);
// The "log" member of a bundle, or nothing. Throws LogNotVerified when it does not parse.
std::optional<LogEvidence> parse_bundle_log(const std::string& bundle_text);
// `restore --image`: the bundle's checkpoint opened with the pinned key and its proof verified for
// the leaf computed from the record; with no network, consistency is only checked against a state
// entry of the same size (another root there is LogFork), and the state file is not written. A
// bundle without evidence is LogNotVerified (unless options.skip).
void check_bundle_in_log(const LogOptions& options, const std::string& bundle_text, const core::Record& record,
                         std::ostream* progress);

}  // namespace keyline::recovery
