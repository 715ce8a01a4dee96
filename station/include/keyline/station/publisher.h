// Publishing records to keyline-backupdb over mutual TLS with the station's token-held client key.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include <Poco/Net/Context.h>

#include "keyline/station/config.h"

namespace keyline::station {

enum class PublishOutcome { Published, AlreadyPublished, Rejected, Unreachable };

struct PublishResult {
  PublishOutcome outcome = PublishOutcome::Unreachable;
  int status = 0;
  std::string detail;  // problem document title/detail or the network error
};

// A 4xx the public DB would answer again whatever the station does: 400 (the body is not a record),
// 409 (another record holds the chip ID or the IMEI), 413, 415, 422 (the record does not validate
// against its trust anchors). The outbox parks such a record for an operator instead of resending
// it. 401, 403, 404, 408, 429 and 5xx can pass later (a certificate or server fixed) and are retried.
bool refused_for_good(int http_status) noexcept;

// "HTTP <status>" and, when the body is a problem document (RFC 9457), its title and detail.
std::string problem_summary(int http_status, const std::string& body);

class Publisher {
 public:
  // Builds the TLS context once (token key through the PKCS#11 engine, trust = tls-ca.pem).
  explicit Publisher(const StationConfig& config);
  // Safe to call from many threads: each call uses its own HTTP session over the shared context.
  PublishResult publish(const std::string& record_json);
  const std::string& url() const { return m_url; }

 private:
  std::string m_url;
  Poco::Net::Context::Ptr m_context;
};

}  // namespace keyline::station
