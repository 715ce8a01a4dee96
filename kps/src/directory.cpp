// The directory of transport key information (Ktl): the target's transport certificate is public and is
// published in its public DB record (certificates[2], core/record.h), so the KPS reads it from there
// instead of taking the target's word for it. The record is validated as recovery validates it
// (chain to --trust, chip, IMEI, the transport certificate's profile under the record's Device CA).
#include <algorithm>
#include <atomic>
#include <future>
#include <map>

#include "keyline/core/cert_profile.h"
#include "keyline/core/http.h"
#include "keyline/core/record.h"
#include "context.h"

namespace keyline::kps {

namespace {

constexpr std::size_t kParallelFetches = 4;

std::string fetch(Context& c, const std::string& chip) {
  core::http::ClientOptions o;
  o.base_url = c.config.backupdb;
  o.ca_file = c.config.backupdb_ca;
  o.connect_attempts = 2;
  o.io_timeout = std::chrono::seconds(10);
  core::http::Client client(o);
  const auto res = client.get("/v1/records/" + chip);
  if (res.status == 404) throw core::FormatError(core::ErrorCode::BadTransportCertificate, "no record for " + chip);
  if (res.status != 200)
    throw core::IoError(core::ErrorCode::Network, "public DB answered " + std::to_string(res.status) + " for " + chip);
  const auto record = core::Record::from_json(res.body);
  if (record.chip_id.str() != chip) throw core::FormatError(core::ErrorCode::BadRecord, "the record names another chip");
  // validate_record accepts [identity, Device CA, transport] only in that order: the second
  // certificate is the Device CA it verified the identity and the transport certificate under.
  core::validate_record(record, c.anchors);
  const auto transport = core::transport_certificate(record);
  if (!transport || record.certificates.size() != 3)
    throw core::FormatError(core::ErrorCode::BadTransportCertificate, "the record of " + chip + " has no transport certificate");
  return core::to_pem(*transport) + core::to_pem(Botan::X509_Certificate(record.certificates[1]));
}

}  // namespace

// Cached in transport_certs once checked: a record never changes (docs/api.md).
std::string transport_chain_from_directory(Context& c, const std::string& chip) {
  auto r = transport_chains_from_directory(c, {chip});
  if (r[0].error) std::rethrow_exception(r[0].error);
  return r[0].chain;
}

// A group asks for up to 32 targets: one query for the cached ones, the others fetched from the public
// DB four at a time (each fetch is a TLS connection and a record check, ~60 ms, mostly waiting), then
// stored in one statement.
std::vector<DirectoryChain> transport_chains_from_directory(Context& c, const std::vector<std::string>& chips) {
  std::vector<DirectoryChain> out(chips.size());
  std::map<std::string, std::string> cached;
  {
    // Chip IDs are 20 hex digits here (parsed by the caller), so the array literal needs no quoting.
    std::string array = "{";
    for (const auto& chip : chips) array += (array.size() > 1 ? "," : "") + chip;
    array += "}";
    auto conn = c.pool->acquire();
    auto r = conn->exec_prepared("SELECT chip, chain_pem FROM transport_certs WHERE chip = ANY($1::text[])", {array});
    for (int i = 0; i < r.rows(); ++i) cached[r.text(i, 0)] = r.text(i, 1);
  }
  std::vector<std::size_t> missing;
  for (std::size_t i = 0; i < chips.size(); ++i) {
    const auto it = cached.find(chips[i]);
    if (it != cached.end()) out[i].chain = it->second;
    else missing.push_back(i);
  }
  // A few at a time: groups arrive side by side too, and the public DB's worker queue is bounded (a
  // full one answers 503, which would refuse the whole group).
  std::atomic<std::size_t> next{0};
  auto worker = [&] {
    for (std::size_t k; (k = next++) < missing.size();) {
      const auto i = missing[k];
      try {
        out[i].chain = fetch(c, chips[i]);
      } catch (...) {
        out[i].error = std::current_exception();
      }
    }
  };
  std::vector<std::future<void>> fetches;
  for (std::size_t t = 1; t < std::min(kParallelFetches, missing.size()); ++t)
    fetches.push_back(std::async(std::launch::async, worker));
  worker();
  for (auto& f : fetches) f.get();
  std::string new_chips = "{", new_chains = "{";
  for (const auto i : missing) {
    if (out[i].error) continue;
    new_chips += (new_chips.size() > 1 ? "," : "") + chips[i];
    // A PEM text holds no '"' or '\\'; quoted, its newlines and commas are plain element text.
    new_chains += std::string(new_chains.size() > 1 ? "," : "") + "\"" + out[i].chain + "\"";
  }
  if (new_chips.size() > 1)
    c.pool->acquire()->exec_prepared(
        "INSERT INTO transport_certs (chip, chain_pem) SELECT * FROM unnest($1::text[], $2::text[]) "
        "ON CONFLICT (chip) DO NOTHING",
        {new_chips + "}", new_chains + "}"});
  return out;
}

}  // namespace keyline::kps
