// Publishing records to keyline-backupdb over mutual TLS with the station's token-held client key.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include <Poco/Net/Context.h>

#include "keyline/station/config.h"

namespace keyline::station {

// Rejected: a 4xx that can pass later (401, 403, 404: a certificate or server someone fixes), retried.
// Refused: a 4xx the public DB would answer again whatever the station does — 400 (the body is not a
// record), 409 (another record holds the chip ID or the IMEI), 413, 415, 422 (the record does not
// validate against its trust anchors): the outbox parks the record for an operator.
// Unreachable: no answer, 408, 429 or 5xx.
enum class PublishOutcome { Published, AlreadyPublished, Rejected, Refused, Unreachable };

// The outcome an HTTP answer to POST /v1/records means (the one classification the publisher and the
// line's lanes share).
PublishOutcome publish_outcome(int http_status) noexcept;

struct PublishResult {
  PublishOutcome outcome = PublishOutcome::Unreachable;
  int status = 0;
  std::string detail;  // problem document title/detail or the network error
};

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
