// `keyline-backupdb witness`: a C2SP tlog-witness (c2sp.org/tlog-witness) for the public DB's log or
// any other log whose Ed25519 key it is given. It cosigns (core/tlog_cosignature.h) a checkpoint only
// when the log key signed it and it extends, by a verified RFC 9162 consistency proof, the last
// checkpoint it cosigned for that origin; that checkpoint is kept durably in the state directory, so
// a restart never cosigns a fork. `witness-push` asks a witness to cosign a DB's latest checkpoint.
// docs/transparency.md, "Witness".
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "keyline/core/checkpoint.h"
#include "keyline/core/http.h"
#include "keyline/core/signed_note.h"
#include "keyline/core/tlog_cosignature.h"

namespace keyline::backupdb {

struct WitnessConfig {
  std::vector<std::string> log_keys;       // --log-key VKEY, repeatable (one per log)
  std::vector<std::string> log_key_files;  // --log-key-file F, repeatable
  std::string key_file;                    // --witness-key-file: PRIVATE+KEY+... (mode 0600)
  std::string name;                        // --name, for `witness init` only
  std::string state_dir;                   // --state DIR
  std::string listen = "127.0.0.1:8450";
  std::string tls_cert, tls_key;           // HTTPS when given
};

// The last checkpoint cosigned for one origin.
struct WitnessedHead {
  std::uint64_t size = 0;
  core::merkle::Hash root{};
};

// The witness's decisions, without HTTP or sockets around them (tested directly).
class Witness {
 public:
  struct Answer {
    int status = 200;
    std::string content_type;
    std::string body;
  };
  // Reads every origin's last cosigned checkpoint from state_dir (created 0700 if missing).
  Witness(std::vector<core::note::Ed25519Verifier> logs, core::tlog::Cosigner key, std::string state_dir);
  // The body of POST /add-checkpoint; `now` is the cosignature's timestamp (POSIX seconds).
  Answer add_checkpoint(const std::string& body, std::uint64_t now);
  std::optional<WitnessedHead> head(const std::string& origin) const;
  const core::tlog::Cosigner& key() const { return m_key; }

 private:
  Answer decide(const std::string& body, std::uint64_t now);
  void persist(const std::string& origin, const std::string& note, const WitnessedHead& head);
  void keep_evidence(const std::string& request, std::uint64_t now);  // in DIR/evidence/, under m_mutex
  unsigned m_evidence = 0;
  std::map<std::string, core::note::Ed25519Verifier> m_logs;  // by origin (= key name)
  core::tlog::Cosigner m_key;
  std::string m_dir;
  mutable std::mutex m_mutex;  // the check of "old" and the update of the state are one step (spec)
  std::map<std::string, WitnessedHead> m_heads;
};

// `witness init`: a new key in key_file (created 0600, never overwritten); returns its vkey.
std::string witness_init(const WitnessConfig& cfg);
// `witness key`: the vkey of key_file.
std::string witness_key(const WitnessConfig& cfg);
// Reads the key file, refusing one that group or others may read (it is the witness's only secret).
core::tlog::Cosigner read_witness_key(const std::string& path);
// `witness`: serves POST /add-checkpoint until SIGINT/SIGTERM.
int witness_serve(const WitnessConfig& cfg);

struct PushConfig {
  std::string db_url, db_ca;            // the public DB (or mirror) whose latest checkpoint is pushed
  std::string witness_url, witness_ca;  // the witness (its CA only for https)
  std::string log_key, log_key_file;
  std::string out;                      // where the cosigned checkpoint note is written ("-": stdout)
};
// Fetches the DB's latest checkpoint, asks the witness to cosign it (on 409, again from the size the
// witness names, with the DB's consistency proof) and writes the note with the cosignature lines.
// Returns the exit code: 0 cosigned, 3 refused by the witness.
int witness_push(const PushConfig& cfg);

// The consistency proof from tree size `from` to the pushed checkpoint, as request proof lines.
using ProofLines = std::function<std::string(std::uint64_t from)>;
// One C2SP tlog-witness add-checkpoint exchange for `note` (a checkpoint of `size`): "old 0" first,
// then once from the size a 409 names. Returns the witness's cosignature lines (each ending in a
// newline), or nullopt with `why` set when the witness refuses. Shared by witness-push and serve
// --witness (docs/transparency.md, "Witness").
std::optional<std::string> request_cosignature(core::http::Client& witness, const std::string& note, std::uint64_t size,
                                               const ProofLines& proof, std::string& why);

}  // namespace keyline::backupdb
