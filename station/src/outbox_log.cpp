// `keyline-station outbox check-log` (docs/transparency.md "Clients"): leaf indexes and verified
// inclusion proofs of the published outbox rows.
#include "keyline/station/outbox_log.h"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "keyline/core/checkpoint.h"
#include "keyline/core/error.h"
#include "keyline/core/http.h"
#include "keyline/core/merkle.h"
#include "keyline/core/record_leaf.h"
#include "keyline/station/pool.h"
#include "keyline/station/publisher.h"

namespace keyline::station {

namespace {

namespace merkle = core::merkle;
namespace tlog = core::tlog;

[[noreturn]] void bad_proof(const std::string& why) { throw core::FormatError(core::ErrorCode::BadProof, why); }

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  const auto e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

core::note::Ed25519Verifier load_key(const LogCheckOptions& o) {
  if (o.log_key.empty() == o.log_key_file.empty())
    throw core::ConfigError(core::ErrorCode::Usage, "give the log's verifier key with exactly one of --log-key or --log-key-file");
  std::string text = o.log_key;
  if (!o.log_key_file.empty()) {
    std::ifstream f(o.log_key_file);
    std::ostringstream s;
    if (!f || !(s << f.rdbuf())) throw core::ConfigError(core::ErrorCode::Config, "cannot read the log key file " + o.log_key_file);
    text = s.str();
  }
  try {
    return core::note::Ed25519Verifier::parse(trim(text));
  } catch (const core::Error& e) {
    throw core::ConfigError(core::ErrorCode::Config, std::string("the log key is not an Ed25519 verifier key: ") + e.what());
  }
}

std::uint64_t get_u64(const Poco::JSON::Object& o, const char* key) {
  const Poco::Dynamic::Var v = o.has(key) ? o.get(key) : Poco::Dynamic::Var();
  try {
    if (v.isEmpty() || !v.isInteger() || v.isString() || (v.isSigned() && v.convert<std::int64_t>() < 0))
      bad_proof(std::string("\"") + key + "\" is not a non-negative integer");
    return v.convert<std::uint64_t>();
  } catch (const Poco::Exception& e) {
    bad_proof(std::string("\"") + key + "\" is out of range: " + e.displayText());
  }
}

core::Bytes get_b64(const Poco::Dynamic::Var& v, const std::string& what) {
  if (!v.isString()) bad_proof(what + " is not a string");
  return core::from_base64(v.extract<std::string>());  // FormatError(BadBase64)
}

struct Proof {
  std::uint64_t leaf_index = 0;
  std::uint64_t tree_size = 0;
  core::Bytes leaf_hash;
  std::vector<core::Bytes> path;
};

// The public DB's GET /v1/records/{chip}/proof answer (docs/api.md).
Proof parse_proof(const std::string& body) {
  Poco::JSON::Object::Ptr o;
  try {
    Poco::JSON::Parser parser;
    parser.setDepth(8);
    const Poco::Dynamic::Var root = parser.parse(body);
    if (root.type() != typeid(Poco::JSON::Object::Ptr)) bad_proof("the answer is not a JSON object");
    o = root.extract<Poco::JSON::Object::Ptr>();
  } catch (const Poco::Exception& e) {
    bad_proof("the answer does not parse: " + e.displayText());
  } catch (const core::Error&) {
    throw;
  } catch (const std::exception& e) {
    bad_proof(std::string("the answer does not parse: ") + e.what());  // Poco's parser can throw std exceptions
  }
  Proof p;
  p.leaf_index = get_u64(*o, "leaf_index");
  p.tree_size = get_u64(*o, "tree_size");
  p.leaf_hash = get_b64(o->has("leaf_hash") ? o->get("leaf_hash") : Poco::Dynamic::Var(), "\"leaf_hash\"");
  const auto arr = o->getArray("proof");
  if (arr.isNull() || arr->size() > 64) bad_proof("\"proof\" is not an array of at most 64 hashes");
  for (unsigned i = 0; i < arr->size(); ++i) p.path.push_back(get_b64(arr->get(i), "\"proof\"[" + std::to_string(i) + "]"));
  return p;
}

// What the row keeps: the proof and the checkpoint it verified against, checkable offline later.
std::string stored_proof(const Proof& p, const std::string& checkpoint_note) {
  std::string out = "{\"leaf_index\":" + std::to_string(p.leaf_index) + ",\"tree_size\":" + std::to_string(p.tree_size) +
                    ",\"leaf_hash\":\"" + core::to_base64(p.leaf_hash) + "\",\"proof\":[";
  for (std::size_t i = 0; i < p.path.size(); ++i) out += (i ? ",\"" : "\"") + core::to_base64(p.path[i]) + "\"";
  return out + "],\"checkpoint\":\"" + core::http::json_escape(checkpoint_note) + "\"}";
}

struct Row {
  std::string chip;
  std::string imei;
  std::string record_hash;
  std::optional<std::uint64_t> leaf_index;
  std::int64_t waited_s = 0;  // since it was published
};

std::vector<Row> unproved_rows(core::pq::Connection& db, int limit) {
  const auto r = db.exec(
      "SELECT o.chip_id, d.imei, o.record_hash, o.leaf_index, extract(epoch FROM now() - o.published_at)::bigint"
      " FROM journal.outbox o JOIN journal.device d ON d.id = o.device_id"
      " WHERE o.published_at IS NOT NULL AND o.log_proof IS NULL"
      // Rows never asked about first, then the ones asked about longest ago: waiting rows go to the
      // back, so a backlog the public DB holds back cannot keep --limit from reaching newer rows.
      " ORDER BY o.log_checked_at NULLS FIRST, o.published_at LIMIT $1",
      {limit});
  std::vector<Row> rows;
  for (int i = 0; i < r.rows(); ++i) {
    Row row{r.text(i, 0), r.text(i, 1), r.text(i, 2), std::nullopt};
    if (!r.is_null(i, 3)) row.leaf_index = static_cast<std::uint64_t>(r.int64(i, 3));
    row.waited_s = r.int64(i, 4);
    rows.push_back(std::move(row));
  }
  return rows;
}

// Step 1: the latest checkpoint under the pinned key. Throws CryptoError/FormatError.
std::pair<tlog::Checkpoint, std::string> latest_checkpoint(core::http::Client& client, const core::note::Ed25519Verifier& key) {
  const auto r = client.get("/v1/log/checkpoint");
  if (r.status != 200)
    throw core::IoError(core::ErrorCode::Http, "the public DB serves no log checkpoint (HTTP " + std::to_string(r.status) + ")");
  return {tlog::open_checkpoint(r.body, key, key.name()).checkpoint, r.body};
}

// Step 1b: the newest checkpoint a stored proof was checked against must be a prefix of this one
// (RFC 9162 section 2.1.4.2): otherwise the public DB shows this station another tree than before.
// Returns the alarm's text, or "" when it extends (or there is nothing stored yet).
std::string fork_alarm(core::pq::Connection& db, core::http::Client& client, const tlog::Checkpoint& cp) {
  const auto r = db.exec("SELECT log_proof FROM journal.outbox WHERE log_proof IS NOT NULL"
                         " ORDER BY log_tree_size DESC, log_checked_at DESC, chip_id LIMIT 1");
  if (r.empty()) return {};
  tlog::Checkpoint seen;
  try {
    const auto o = Poco::JSON::Parser().parse(r.text(0, 0)).extract<Poco::JSON::Object::Ptr>();
    // Verified when it was stored; the station's own database is trusted.
    seen = tlog::parse_checkpoint(core::note::parse_note(o->getValue<std::string>("checkpoint")).text);
  } catch (const std::exception& e) {
    return std::string("a stored proof's checkpoint does not parse: ") + e.what();
  }
  const auto head = [](const tlog::Checkpoint& c) {
    return "size " + std::to_string(c.size) + " root " + core::to_base64(c.root.data(), c.root.size());
  };
  const std::string both = "stored proofs were checked against " + head(seen) + ", the log now shows " + head(cp);
  if (cp.size < seen.size) return "the log forked: its tree is smaller than before (" + both + ")";
  if (cp.size == seen.size) return cp.root == seen.root ? "" : "the log forked: another root at the same size (" + both + ")";
  const auto a = client.get("/v1/log/consistency?from=" + std::to_string(seen.size) + "&to=" + std::to_string(cp.size));
  if (a.status >= 500 || a.status == 429)
    throw core::IoError(core::ErrorCode::Http, "the public DB answered HTTP " + std::to_string(a.status));
  std::vector<core::Bytes> proof;
  try {
    const auto o = Poco::JSON::Parser().parse(a.body).extract<Poco::JSON::Object::Ptr>();
    const auto arr = o->getArray("proof");
    if (a.status != 200 || arr.isNull() || arr->size() > 128) return "the log gives no consistency proof (" + both + ")";
    for (unsigned i = 0; i < arr->size(); ++i) proof.push_back(get_b64(arr->get(i), "\"proof\""));
    merkle::verify_consistency(seen.size, cp.size, proof, merkle::to_bytes(seen.root), merkle::to_bytes(cp.root));
  } catch (const std::exception& e) {
    return "the log forked: the tree seen before is not a prefix of the new one (" + both + "): " + e.what();
  }
  return {};
}

enum class RowOutcome { Proved, Waiting };

// A "not-integrated" answer. The public DB itself says so only for a leaf at or past the checkpoint's
// size (docs/transparency.md "Clients"), so for a leaf index it answered at publish that the
// checkpoint holds, it hides the record; a row waiting longer than the log's integration delay allows
// is held back. Both throw FormatError(BadProof); otherwise the row goes to the back of the queue.
RowOutcome waiting(core::pq::Connection& db, const Row& row, const tlog::Checkpoint& cp, int max_wait_s) {
  if (row.leaf_index && *row.leaf_index < cp.size)
    bad_proof("the public DB calls it not yet integrated, but it was published as leaf " + std::to_string(*row.leaf_index) +
              " and the checkpoint holds " + std::to_string(cp.size) + " entries");
  if (row.waited_s > max_wait_s)
    bad_proof("not in a checkpoint " + std::to_string(row.waited_s) + " s after it was published (--max-wait " +
              std::to_string(max_wait_s) + ")");
  db.exec("UPDATE journal.outbox SET log_checked_at = now() WHERE chip_id = $1 AND log_proof IS NULL", {row.chip});
  return RowOutcome::Waiting;
}

// Step 2, one row: its proof at the checkpoint's size, for the leaf computed from the row. Throws
// FormatError(BadProof) naming why the log does not prove it.
RowOutcome check_row(core::pq::Connection& db, core::http::Client& client, const Row& row, const tlog::Checkpoint& cp,
                     const std::string& note, int max_wait_s) {
  const auto r = client.get("/v1/records/" + row.chip + "/proof?tree_size=" + std::to_string(cp.size));
  if (r.status == 404 && r.body.find("not-integrated") != std::string::npos) return waiting(db, row, cp, max_wait_s);
  if (r.status >= 500 || r.status == 429)
    throw core::IoError(core::ErrorCode::Http, "the public DB answered HTTP " + std::to_string(r.status));
  if (r.status != 200) bad_proof("the log has no entry for it (HTTP " + std::to_string(r.status) + ")");
  const Proof p = parse_proof(r.body);
  const auto leaf = merkle::leaf_hash(core::encode_record_leaf(core::ChipId::parse(row.chip), core::Imei::parse(row.imei),
                                                               row.record_hash));
  if (p.tree_size != cp.size) bad_proof("the proof is for another tree size");
  if (p.leaf_hash != merkle::to_bytes(leaf)) bad_proof("the log's entry " + std::to_string(p.leaf_index) + " is another record");
  if (row.leaf_index && *row.leaf_index != p.leaf_index)
    bad_proof("the record moved: published as leaf " + std::to_string(*row.leaf_index) + ", the proof is for leaf " +
              std::to_string(p.leaf_index));
  merkle::verify_inclusion(p.leaf_index, cp.size, merkle::to_bytes(leaf), p.path, merkle::to_bytes(cp.root));
  db.exec("UPDATE journal.outbox SET leaf_index = $2, log_tree_size = $3, log_proof = $4, log_checked_at = now()"
          " WHERE chip_id = $1",
          {row.chip, static_cast<std::int64_t>(p.leaf_index), static_cast<std::int64_t>(p.tree_size), stored_proof(p, note)});
  return RowOutcome::Proved;
}

}  // namespace

void store_leaf_indexes(core::pq::Connection& db, const std::vector<std::pair<std::string, std::uint64_t>>& leaves) {
  if (leaves.empty()) return;
  // Array parameters in PostgreSQL's text form (manual section 8.15.6): chip IDs are 20 hex digits.
  std::string chips = "{", idx = "{";
  for (const auto& [chip, leaf] : leaves) {
    if (!core::ChipId::is_valid(chip)) throw core::FormatError(core::ErrorCode::BadChipId, "not a chip ID: " + chip);
    chips += (chips.size() > 1 ? "," : "") + chip;
    idx += (idx.size() > 1 ? "," : "") + std::to_string(leaf);
  }
  db.exec("UPDATE journal.outbox o SET leaf_index = l.leaf FROM unnest($1::text[], $2::bigint[]) AS l(chip, leaf)"
          " WHERE o.chip_id = l.chip AND o.leaf_index IS NULL",
          {chips + "}", idx + "}"});
}

LogCheckResult check_outbox_log(const StationConfig& config, const LogCheckOptions& options, std::ostream& out) {
  const auto key = load_key(options);
  core::pq::Connection db(config.db);
  migrate_station_db(db);
  Publisher publisher(config);
  auto client = publisher.client();
  const auto [cp, note] = latest_checkpoint(*client, key);
  LogCheckResult res;
  res.tree_size = cp.size;
  if (const std::string alarm = fork_alarm(db, *client, cp); !alarm.empty()) {
    // Nothing is stored from a tree that does not extend the one the stored proofs hold.
    res.forked = true;
    out << "keyline-station: ALARM: " << alarm << "\n";
    return res;
  }
  const auto pause = std::chrono::microseconds(1000000 / std::max(1, options.rate));
  for (const Row& row : unproved_rows(db, std::max(1, options.limit))) {
    try {
      if (check_row(db, *client, row, cp, note, options.max_wait_s) == RowOutcome::Proved) ++res.proved;
      else ++res.waiting;
    } catch (const core::FormatError& e) {
      // Not a network problem: the log the public DB shows does not hold what this station published.
      ++res.failed;
      out << "keyline-station: ALARM: the log does not prove chip " << row.chip << "'s record " << row.record_hash << ": "
          << e.what() << "\n";
    }
    std::this_thread::sleep_for(pause);
  }
  return res;
}

int cmd_outbox_check_log(const StationConfig& config, const LogCheckOptions& options) {
  const auto r = check_outbox_log(config, options, std::cerr);
  std::cout << "check-log: checkpoint of " << r.tree_size << " entries; " << r.proved << " records proved now, " << r.waiting
            << " not yet in a checkpoint, " << r.failed << " NOT proved by the log\n";
  if (r.forked) return core::exit_code::refused;
  return r.failed > 0 ? core::exit_code::bad_input : core::exit_code::ok;
}

}  // namespace keyline::station
