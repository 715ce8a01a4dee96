// `keyline-backupdb witness-push`: a public DB's latest checkpoint, cosigned by a witness
// (C2SP tlog-witness "add-checkpoint"; docs/transparency.md, "Witness").
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "keyline/backupdb/witness.h"
#include "keyline/core/error.h"
#include "keyline/core/http.h"

namespace keyline::backupdb {

namespace {

namespace http = core::http;
namespace tlog = core::tlog;

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  const auto e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::unique_ptr<http::Client> client(const std::string& url, const std::string& ca) {
  http::ClientOptions o;
  o.base_url = url;
  o.ca_file = ca;
  return std::make_unique<http::Client>(o);
}

[[noreturn]] void refused(const std::string& why) { throw core::Error(core::ErrorCode::BadProof, why); }

// The DB's consistency proof from `from` to `to` as the proof lines of a request.
std::string proof_lines(http::Client& db, std::uint64_t from, std::uint64_t to) {
  if (from == 0 || from == to) return "";
  const auto r = db.get("/v1/log/consistency?from=" + std::to_string(from) + "&to=" + std::to_string(to));
  if (r.status != 200) refused("the DB gives no consistency proof from " + std::to_string(from) + " (HTTP " + std::to_string(r.status) + ")");
  try {
    Poco::JSON::Parser p;
    const auto o = p.parse(r.body).extract<Poco::JSON::Object::Ptr>();
    const auto arr = o->getArray("proof");
    std::string out;
    for (unsigned i = 0; arr && i < arr->size(); ++i) out += arr->getElement<std::string>(i) + "\n";
    return out;
  } catch (const Poco::Exception& e) {
    refused("the DB's consistency proof does not parse: " + e.displayText());
  }
}

std::uint64_t parse_size(const std::string& body) {
  const std::string d = trim(body);
  if (d.empty() || d.size() > 20 || d.find_first_not_of("0123456789") != std::string::npos)
    refused("the witness's 409 answer is not a tree size");
  return std::stoull(d);
}

}  // namespace

int witness_push(const PushConfig& cfg) {
  std::string key_text = cfg.log_key;
  if (!cfg.log_key_file.empty()) {
    std::ifstream f(cfg.log_key_file);
    std::ostringstream s;
    if (!f || !(s << f.rdbuf())) throw core::ConfigError(core::ErrorCode::Config, "cannot read " + cfg.log_key_file);
    key_text = s.str();
  }
  const auto key = core::note::Ed25519Verifier::parse(trim(key_text));
  const auto db = client(cfg.db_url, cfg.db_ca);
  const auto witness = client(cfg.witness_url, cfg.witness_ca);
  const auto r = db->get("/v1/log/checkpoint");
  if (r.status != 200) refused("the DB serves no checkpoint (HTTP " + std::to_string(r.status) + ")");
  const tlog::Checkpoint cp = tlog::open_checkpoint(r.body, key, key.name()).checkpoint;

  std::string why;
  const auto lines = request_cosignature(*witness, r.body, cp.size,
                                         [&db, &cp](std::uint64_t from) { return proof_lines(*db, from, cp.size); }, why);
  if (!lines) {
    std::fprintf(stderr, "keyline-backupdb: %s\n", why.c_str());
    return 3;
  }
  const std::string note = r.body + *lines;
  if (cfg.out.empty() || cfg.out == "-") {
    std::cout << note << std::flush;
  } else {
    std::ofstream out(cfg.out, std::ios::binary | std::ios::trunc);
    if (!(out << note)) throw core::IoError(core::ErrorCode::Io, "cannot write " + cfg.out);
  }
  return 0;
}

std::optional<std::string> request_cosignature(http::Client& witness, const std::string& note, std::uint64_t size,
                                               const ProofLines& proof, std::string& why) {
  // First "old 0" (the spec's way to learn the witness's size), then from the size it names.
  std::uint64_t old = 0;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const std::string body = "old " + std::to_string(old) + "\n" + proof(old) + "\n" + note;
    const auto a = witness.post("/add-checkpoint", body, "text/plain; charset=utf-8");
    if (a.status == 200) return a.body;
    if (a.status != 409 || attempt == 1) {
      why = "the witness refused the checkpoint of size " + std::to_string(size) + ": HTTP " + std::to_string(a.status) +
            " " + trim(a.body);
      return std::nullopt;
    }
    old = parse_size(a.body);
    if (old > size) {
      why = "the witness cosigned a larger tree (" + std::to_string(old) + ") than the DB serves (" + std::to_string(size) + ")";
      return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace keyline::backupdb
