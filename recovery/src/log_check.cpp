// The online log check (docs/recovery.md section 7): checkpoint, inclusion, consistency, state.
#include "keyline/recovery/log_check.h"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include <sys/stat.h>
#include <unistd.h>

#include "keyline/core/error.h"
#include "keyline/core/record_leaf.h"
#include "keyline/core/tlog_cosignature.h"
#include "keyline/recovery/errors.h"
#include "keyline/recovery/recovery.h"

namespace keyline::recovery {

namespace {

namespace merkle = core::merkle;
namespace tlog = core::tlog;

void say(std::ostream* out, const std::string& line) {
  if (out) *out << "keyline-recovery: " << line << std::endl;
}

[[noreturn]] void not_verified(const std::string& why) { throw core::Error(errc::LogNotVerified, why); }

std::string b64(const merkle::Hash& h) { return core::to_base64(h.data(), h.size()); }

std::string head_text(const LogHead& h) { return "size " + std::to_string(h.size) + " root " + b64(h.root); }

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  const auto e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// Poco 1.11 misreads integers past 2^64 - 1 (2^64 as 0, docs/recovery.md section 6). Harmless here:
// the tree size read must equal the signed checkpoint's, and a leaf index must make the proof lead
// to the signed root for the leaf computed from the record.
std::uint64_t get_u64(const Poco::JSON::Object& o, const char* key) {
  if (!o.has(key)) not_verified(std::string("the log's answer has no \"") + key + "\"");
  const Poco::Dynamic::Var v = o.get(key);
  if (!v.isInteger() || v.isString()) not_verified(std::string("\"") + key + "\" in the log's answer is not an integer");
  try {
    if (v.isSigned() && v.convert<std::int64_t>() < 0) not_verified(std::string("\"") + key + "\" in the log's answer is negative");
    return v.convert<std::uint64_t>();
  } catch (const Poco::Exception& e) {
    not_verified(std::string("\"") + key + "\" in the log's answer is out of range: " + e.displayText());
  }
}

core::Bytes get_b64(const Poco::Dynamic::Var& v, const std::string& what) {
  if (!v.isString()) not_verified(what + " in the log's answer is not a string");
  try {
    return core::from_base64(v.extract<std::string>());
  } catch (const core::Error& e) {
    not_verified(what + " in the log's answer is not base64: " + e.what());
  }
}

std::vector<core::Bytes> get_hashes(const Poco::JSON::Object& o, const char* key) {
  if (!o.has(key)) not_verified(std::string("the log's answer has no \"") + key + "\"");
  const auto arr = o.getArray(key);
  if (arr.isNull()) not_verified(std::string("\"") + key + "\" in the log's answer is not an array");
  // core::merkle refuses proofs of more than 64 (inclusion) or 128 (consistency) hashes
  // (docs/transparency.md); more are not even decoded.
  if (arr->size() > 128) not_verified(std::string("\"") + key + "\" in the log's answer has more than 128 hashes");
  std::vector<core::Bytes> out;
  for (unsigned i = 0; i < arr->size(); ++i) out.push_back(get_b64(arr->get(i), std::string(key) + "[" + std::to_string(i) + "]"));
  return out;
}

Poco::JSON::Object::Ptr parse_object(const std::string& json) {
  try {
    Poco::JSON::Parser parser;
    parser.setDepth(8);
    const Poco::Dynamic::Var root = parser.parse(json);
    if (root.type() != typeid(Poco::JSON::Object::Ptr)) not_verified("the log's answer is not a JSON object");
    return root.extract<Poco::JSON::Object::Ptr>();
  } catch (const Poco::Exception& e) {
    not_verified("the log's answer does not parse: " + e.displayText());
  } catch (const std::exception& e) {
    not_verified(std::string("the log's answer does not parse: ") + e.what());
  }
}

// The leaf computed here from the record must be the answer's, and its proof must lead to the root.
void verify_inclusion_answer(const tlog::Checkpoint& cp, const InclusionAnswer& a, const core::Record& record) {
  if (a.tree_size != cp.size)
    not_verified("the inclusion proof is for tree size " + std::to_string(a.tree_size) + ", the checkpoint's is " +
                 std::to_string(cp.size));
  const merkle::Hash leaf = merkle::leaf_hash(core::encode_record_leaf(record.chip_id, record.imei, record.hash()));
  if (a.leaf_hash != merkle::to_bytes(leaf))
    not_verified("the log's entry " + std::to_string(a.leaf_index) + " for chip " + record.chip_id.str() +
                 " is not this record (its leaf hash differs from the one computed from the record)");
  try {
    merkle::verify_inclusion(a.leaf_index, cp.size, merkle::to_bytes(leaf), a.proof, merkle::to_bytes(cp.root));
  } catch (const core::Error& e) {
    not_verified("the inclusion proof of leaf " + std::to_string(a.leaf_index) + " does not verify against the checkpoint (" +
                 head_text({cp.size, cp.root}) + "): " + e.what());
  }
}

// Step 2: the inclusion proof at exactly that checkpoint's size, checked for the leaf computed here.
InclusionAnswer check_inclusion(core::http::Client& client, const DbOptions& db, const tlog::Checkpoint& cp,
                              const core::Record& record) {
  const std::string path = "/v1/records/" + record.chip_id.str() + "/proof?tree_size=" + std::to_string(cp.size);
  const auto r = log_get(client, db, path);
  if (r.status == 404 && r.body.find("not-integrated") != std::string::npos)
    throw core::Error(errc::LogNotIntegrated, "the record of chip " + record.chip_id.str() +
                                                  " is published but not yet in a log checkpoint; try again in a few seconds");
  if (r.status != 200)
    not_verified("the log holds no entry for chip " + record.chip_id.str() + " at tree size " + std::to_string(cp.size) +
                 " (HTTP " + std::to_string(r.status) + "): the DB serves a record its log does not prove");
  const InclusionAnswer a = parse_inclusion_answer(r.body);
  verify_inclusion_answer(cp, a, record);
  return a;
}

// Steps 1 and 2, again each second while the record waits for its first checkpoint.
std::pair<SignedCheckpoint, InclusionAnswer> included_checkpoint(core::http::Client& client, const DbOptions& db,
                                                               const core::note::Ed25519Verifier& key,
                                                               const core::Record& record, std::chrono::milliseconds wait,
                                                               std::ostream* progress) {
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (bool said = false;; said = true) {
    SignedCheckpoint cp = fetch_log_checkpoint(client, db, key);
    try {
      InclusionAnswer a = check_inclusion(client, db, cp.checkpoint, record);
      return {std::move(cp), std::move(a)};
    } catch (const core::Error& e) {
      if (e.code() != errc::LogNotIntegrated || std::chrono::steady_clock::now() >= deadline) throw;
      if (!said) say(progress, "the record is not yet in a log checkpoint; waiting for the next one");
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

}  // namespace

// One GET of the log API; the DB's reachability errors are those of fetch_record_json.
core::http::Response log_get(core::http::Client& client, const DbOptions& db, const std::string& path) {
  try {
    auto r = client.get(path);
    if (r.status >= 500 || r.status == 429)
      throw core::IoError(errc::DbUnavailable, "the public DB at " + db.url + " answered HTTP " + std::to_string(r.status) +
                                                   " for " + path + "; try again later");
    return r;
  } catch (const core::ConfigError&) {
    throw;
  } catch (const core::IoError&) {
    throw;
  } catch (const core::Error& e) {
    if (e.code() == core::ErrorCode::Http) not_verified("the public DB sent no usable answer for " + path + ": " + e.what());
    throw core::IoError(errc::DbUnavailable, "the public DB at " + db.url + " cannot be reached for " + path + ": " + e.what());
  }
}

tlog::Checkpoint open_log_checkpoint(const std::string& note, const core::note::Ed25519Verifier& key) {
  try {
    return tlog::open_checkpoint(note, key, key.name()).checkpoint;
  } catch (const core::Error& e) {
    not_verified("the log's checkpoint is not signed by the pinned log key " + key.text() + ": " + e.what());
  }
}

// Step 1: the latest checkpoint, opened with the pinned key (its name is the origin).
SignedCheckpoint fetch_log_checkpoint(core::http::Client& client, const DbOptions& db, const core::note::Ed25519Verifier& key) {
  auto r = log_get(client, db, "/v1/log/checkpoint");
  if (r.status != 200)
    not_verified("the public DB serves no log checkpoint (HTTP " + std::to_string(r.status) +
                 "): it keeps no transparency log, or this is not the DB the log key belongs to");
  tlog::Checkpoint cp = open_log_checkpoint(r.body, key);
  return {std::move(cp), std::move(r.body)};
}

// Step 3: the consistency proof from the last head seen, when the tree grew.
void check_log_extends(core::http::Client& client, const DbOptions& db, const std::string& origin, const LogHead& seen,
                        const LogHead& next) {
  std::vector<core::Bytes> proof;
  if (seen.size < next.size) {
    const std::string path = "/v1/log/consistency?from=" + std::to_string(seen.size) + "&to=" + std::to_string(next.size);
    const auto r = log_get(client, db, path);
    if (r.status != 200)
      throw core::Error(errc::LogFork, "the log of " + origin + " gives no consistency proof from the " + head_text(seen) +
                                           " seen before to its " + head_text(next) + " (HTTP " + std::to_string(r.status) + ")");
    try {
      proof = parse_consistency_answer(r.body, seen.size, next.size);
    } catch (const core::Error& e) {
      throw core::Error(errc::LogFork, "the log of " + origin + "'s consistency proof from " + head_text(seen) + " to " +
                                           head_text(next) + " is unusable: " + e.what());
    }
  }
  check_consistent(origin, seen, next, proof);
}


void check_witnessed(const LogOptions& options, const std::string& checkpoint_note) {
  if (options.witnesses == 0) return;
  if (options.witnesses > options.witness_keys.size())
    throw core::ConfigError(core::ErrorCode::Usage, "--witnesses " + std::to_string(options.witnesses) + " asks for more "
                                                    "cosignatures than the --witness-key keys given");
  std::vector<tlog::CosignerKey> keys;
  for (const auto& k : options.witness_keys) {
    try {
      keys.push_back(tlog::CosignerKey::parse(trim(k)));
    } catch (const core::Error& e) {
      throw core::ConfigError(core::ErrorCode::Usage, std::string("a --witness-key is not a cosigner key: ") + e.what());
    }
    // --witnesses counts witnesses, and a witness is its key: a key given twice would meet the count alone.
    for (std::size_t i = 0; i + 1 < keys.size(); ++i)
      if (keys[i].public_key() == keys.back().public_key())
        throw core::ConfigError(core::ErrorCode::Usage, "the --witness-key " + keys.back().name() +
                                                        " repeats the key of " + keys[i].name());
  }
  std::vector<std::string> valid;
  try {
    valid = tlog::verified_cosigners(checkpoint_note, keys);
  } catch (const core::Error& e) {
    throw core::Error(errc::LogNotWitnessed, std::string("a pinned witness's cosignature on the log's checkpoint fails: ") + e.what());
  }
  if (valid.size() < options.witnesses)
    throw core::Error(errc::LogNotWitnessed,
                      "the log's checkpoint carries " + std::to_string(valid.size()) + " valid cosignature(s) by the pinned "
                      "witnesses, " + std::to_string(options.witnesses) + " required (--witnesses): no witness vouches "
                      "that this is the tree everyone else sees");
}

std::string default_state_path() {
  const char* xdg = std::getenv("XDG_STATE_HOME");
  if (xdg && *xdg == '/') return std::string(xdg) + "/keyline/log-state";
  const char* home = std::getenv("HOME");
  if (!home || !*home) throw core::ConfigError(core::ErrorCode::Usage, "no $HOME or $XDG_STATE_HOME: give --log-state FILE");
  return std::string(home) + "/.local/state/keyline/log-state";
}

core::note::Ed25519Verifier load_log_key(const LogOptions& o) {
  if (o.log_key.empty() == o.log_key_file.empty())
    throw core::ConfigError(core::ErrorCode::Usage,
                            "give the log's verifier key with exactly one of --log-key VKEY or --log-key-file FILE "
                            "(`keyline-backupdb log key` prints it), or --no-log-check");
  std::string text = o.log_key;
  if (!o.log_key_file.empty()) {
    std::ifstream f(o.log_key_file);
    std::ostringstream s;
    if (!f || !(s << f.rdbuf()))
      throw core::ConfigError(core::ErrorCode::Config, "cannot read the log key file " + o.log_key_file);
    text = s.str();
  }
  try {
    return core::note::Ed25519Verifier::parse(trim(text));
  } catch (const core::Error& e) {
    throw core::ConfigError(core::ErrorCode::Config, std::string("the log key is not an Ed25519 verifier key: ") + e.what());
  }
}

LogState read_log_state(const std::string& path) {
  std::ifstream f(path);
  LogState state;
  if (!f) {
    if (errno == ENOENT) return state;
    throw core::Error(errc::LogStateBad, "cannot read the log state file " + path);
  }
  std::string line;
  for (int n = 1; std::getline(f, line); ++n) {
    const auto bad = [&](const std::string& why) {
      throw core::Error(errc::LogStateBad, "the log state file " + path + " line " + std::to_string(n) + ": " + why +
                                               " (fix or remove it; removing it trusts the next checkpoint anew)");
    };
    const auto s1 = line.find(' ');
    const auto s2 = s1 == std::string::npos ? s1 : line.find(' ', s1 + 1);
    if (s2 == std::string::npos || s2 + 1 >= line.size()) bad("not \"<size> <root> <origin>\"");
    const std::string size = line.substr(0, s1), root = line.substr(s1 + 1, s2 - s1 - 1);
    if (size.empty() || size.size() > 20 || size.find_first_not_of("0123456789") != std::string::npos) bad("bad size");
    LogHead h;
    errno = 0;
    h.size = std::strtoull(size.c_str(), nullptr, 10);
    if (errno == ERANGE) bad("bad size");
    std::optional<merkle::Hash> r;
    try {
      r = merkle::to_hash(core::from_base64(root));
    } catch (const core::Error&) {
    }
    if (!r) bad("the root is not 32 bytes of base64");
    h.root = *r;
    if (!state.emplace(line.substr(s2 + 1), h).second) bad("a second line for one origin");
  }
  return state;
}

std::string format_log_state(const LogState& state) {
  std::string out;
  for (const auto& [origin, h] : state) out += std::to_string(h.size) + " " + b64(h.root) + " " + origin + "\n";
  return out;
}

void write_log_state(const std::string& path, const LogState& state) {
  const auto slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    // mkdir -p: each missing parent, 0700 as XDG asks of its state directory.
    for (auto p = path.find('/', 1); p != std::string::npos && p <= slash; p = path.find('/', p + 1))
      if (::mkdir(path.substr(0, p).c_str(), 0700) != 0 && errno != EEXIST)
        throw core::IoError(core::ErrorCode::Io, "cannot create the directory of " + path);
  }
  // Per process, so two runs at once never write one temporary file (the last rename wins whole).
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const std::string text = format_log_state(state);
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw core::IoError(core::ErrorCode::Io, "cannot write " + tmp);
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  std::fclose(f);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw core::IoError(core::ErrorCode::Io, "cannot write " + path);
  }
}

void check_consistent(const std::string& origin, const LogHead& seen, const LogHead& next,
                      const std::vector<core::Bytes>& proof) {
  const std::string both = "seen before: " + head_text(seen) + "; now: " + head_text(next);
  if (next.size < seen.size)
    throw core::Error(errc::LogFork, "the log of " + origin + " forked: its tree is smaller than the one seen before (" + both +
                                         "); a log only grows, so someone is shown another tree");
  if (next.size == seen.size && next.root != seen.root)
    throw core::Error(errc::LogFork, "the log of " + origin + " forked: another root at the same size (" + both + ")");
  if (next.size == seen.size) return;
  try {
    merkle::verify_consistency(seen.size, next.size, proof, merkle::to_bytes(seen.root), merkle::to_bytes(next.root));
  } catch (const core::Error& e) {
    throw core::Error(errc::LogFork, "the log of " + origin + " forked: the tree seen before is not a prefix of the new one (" +
                                         both + "): " + e.what());
  }
}

InclusionAnswer parse_inclusion_answer(const std::string& json) {
  const auto o = parse_object(json);
  InclusionAnswer a;
  a.leaf_index = get_u64(*o, "leaf_index");
  a.tree_size = get_u64(*o, "tree_size");
  if (!o->has("leaf_hash")) not_verified("the log's answer has no \"leaf_hash\"");
  a.leaf_hash = get_b64(o->get("leaf_hash"), "\"leaf_hash\"");
  a.proof = get_hashes(*o, "proof");
  return a;
}

std::vector<core::Bytes> parse_consistency_answer(const std::string& json, std::uint64_t size1, std::uint64_t size2) {
  const auto o = parse_object(json);
  if (get_u64(*o, "size1") != size1 || get_u64(*o, "size2") != size2)
    not_verified("the consistency proof is not between sizes " + std::to_string(size1) + " and " + std::to_string(size2));
  return get_hashes(*o, "proof");
}

std::optional<LogEvidence> check_record_in_log(const DbOptions& db, const LogOptions& options, const core::Record& record,
                                               std::ostream* progress) {
  if (options.skip) {
    say(progress, "WARNING: --no-log-check: the record is NOT checked against the transparency log; a record swapped "
                  "in the public DB, or shown only to you, would not be noticed");
    return std::nullopt;
  }
  const auto key = load_log_key(options);
  const std::string state_path = options.state_file.empty() ? default_state_path() : options.state_file;
  LogState state = read_log_state(state_path);
  const auto client = make_db_client(db);

  auto [signed_cp, answer] = included_checkpoint(*client, db, key, record, options.integration_wait, progress);
  const tlog::Checkpoint& cp = signed_cp.checkpoint;
  check_witnessed(options, signed_cp.note);
  say(progress, "the record is leaf " + std::to_string(answer.leaf_index) + " of the log " + cp.origin + " (checkpoint " +
                    head_text({cp.size, cp.root}) + ", signed by the pinned log key)");
  const LogHead next{cp.size, cp.root};
  const auto seen = state.find(cp.origin);
  if (seen == state.end()) {
    say(progress, "first checkpoint seen of this log: kept in " + state_path + " for the next consistency check");
  } else {
    check_log_extends(*client, db, cp.origin, seen->second, next);
    say(progress, "the checkpoint extends the one seen before (" + head_text(seen->second) + ")");
  }
  state[cp.origin] = next;
  write_log_state(state_path, state);
  return LogEvidence{std::move(signed_cp.note), std::move(answer)};
}

std::string bundle_with_log(const std::string& record_json, const LogEvidence& ev) {
  const auto end = record_json.find_last_of('}');
  if (end == std::string::npos) not_verified("the record is not a JSON object");
  std::string proof = "[";
  for (const auto& h : ev.proof.proof) proof += (proof.size() > 1 ? ",\"" : "\"") + core::to_base64(h) + "\"";
  return record_json.substr(0, end) + ",\"log\":{\"leaf_index\":" + std::to_string(ev.proof.leaf_index) +
         ",\"tree_size\":" + std::to_string(ev.proof.tree_size) + ",\"leaf_hash\":\"" + core::to_base64(ev.proof.leaf_hash) +
         "\",\"proof\":" + proof + "],\"checkpoint\":\"" + core::http::json_escape(ev.checkpoint_note) + "\"}" +
         record_json.substr(end);
}

std::optional<LogEvidence> parse_bundle_log(const std::string& bundle_text) {
  const auto o = parse_object(bundle_text);
  if (!o->has("log")) return std::nullopt;
  const auto log = o->getObject("log");
  if (log.isNull()) not_verified("the bundle's \"log\" is not an object");
  std::ostringstream text;
  log->stringify(text);
  LogEvidence ev;
  ev.proof = parse_inclusion_answer(text.str());
  const Poco::Dynamic::Var note = log->has("checkpoint") ? log->get("checkpoint") : Poco::Dynamic::Var();
  if (!note.isString()) not_verified("the bundle's \"log\" has no \"checkpoint\" text");
  ev.checkpoint_note = note.extract<std::string>();
  return ev;
}

void check_bundle_in_log(const LogOptions& options, const std::string& bundle_text, const core::Record& record,
                         std::ostream* progress) {
  if (options.skip) {
    say(progress, "WARNING: --no-log-check: the bundle's record is NOT checked against the transparency log");
    return;
  }
  const auto key = load_log_key(options);
  const auto ev = parse_bundle_log(bundle_text);
  if (!ev)
    not_verified("the bundle carries no log proof (not written by `fetch` with the log check): fetch it again, or give "
                 "--no-log-check");
  const tlog::Checkpoint cp = open_log_checkpoint(ev->checkpoint_note, key);
  check_witnessed(options, ev->checkpoint_note);
  verify_inclusion_answer(cp, ev->proof, record);
  say(progress, "the bundle proves the record is leaf " + std::to_string(ev->proof.leaf_index) + " of the log " + cp.origin +
                    " (checkpoint " + head_text({cp.size, cp.root}) + ", signed by the pinned log key)");
  const std::string state_path = options.state_file.empty() ? default_state_path() : options.state_file;
  const LogState state = read_log_state(state_path);
  const auto seen = state.find(cp.origin);
  // Offline there is no consistency proof: only the same size can be compared, and nothing is kept.
  if (seen != state.end() && seen->second.size == cp.size) {
    check_consistent(cp.origin, seen->second, {cp.size, cp.root}, {});
  } else {
    say(progress, "offline: the bundle's checkpoint is not checked for consistency with the one seen before "
                  "(the next online run does that); the state file is left as it is");
  }
}

}  // namespace keyline::recovery
