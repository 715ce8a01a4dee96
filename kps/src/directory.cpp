// The directory of transport key information (Ktl): the target's transport certificate is public and is
// published in its public DB record (certificates[2], core/record.h), so the KPS reads it from there
// instead of taking the target's word for it. The record is validated as recovery validates it
// (chain to --trust, chip, IMEI, the transport certificate's profile under the record's Device CA).
#include "keyline/core/cert_profile.h"
#include "keyline/core/http.h"
#include "keyline/core/record.h"
#include "context.h"

namespace keyline::kps {

namespace {

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
  core::validate_record(record, c.anchors);
  const auto transport = core::transport_certificate(record);
  if (!transport || record.certificates.size() < 2)
    throw core::FormatError(core::ErrorCode::BadTransportCertificate, "the record of " + chip + " has no transport certificate");
  return core::to_pem(*transport) + core::to_pem(Botan::X509_Certificate(record.certificates[1]));
}

}  // namespace

// Cached in transport_certs once checked: a record never changes (docs/api.md).
std::string transport_chain_from_directory(Context& c, const std::string& chip) {
  {
    auto conn = c.pool->acquire();
    auto r = conn->exec_prepared("SELECT chain_pem FROM transport_certs WHERE chip = $1", {chip});
    if (!r.empty()) return r.text(0, 0);
  }
  const std::string chain = fetch(c, chip);
  c.pool->acquire()->exec_prepared(
      "INSERT INTO transport_certs (chip, chain_pem) VALUES ($1, $2) ON CONFLICT (chip) DO NOTHING", {chip, chain});
  return chain;
}

}  // namespace keyline::kps
