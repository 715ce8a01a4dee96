// Publishing records to keyline-backupdb over mutual TLS with the station's token-held client key.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <Poco/Net/Context.h>

#include "keyline/core/http.h"
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
// The "leaf_index" of a publish answer (docs/transparency.md "Clients"): the record's place in the
// public DB's transparency log. Read from 201 and 200 (the same record again) only: a 409 names the
// leaf of the *other* record that holds the chip or IMEI. Nothing when the body has none (a public
// DB without the log) or it is not a non-negative integer.
std::optional<std::uint64_t> publish_leaf_index(const std::string& body) noexcept;

struct PublishResult {
  PublishOutcome outcome = PublishOutcome::Unreachable;
  int status = 0;
  std::string detail;  // problem document title/detail or the network error
  std::optional<std::uint64_t> leaf_index;  // when published and the public DB keeps a log
};

// "HTTP <status>" and, when the body is a problem document (RFC 9457), its title and detail.
std::string problem_summary(int http_status, const std::string& body);

class Publisher {
 public:
  // Builds the TLS context once (token key through the PKCS#11 engine, trust = tls-ca.pem).
  explicit Publisher(const StationConfig& config);
  // Safe to call from many threads: each call uses its own HTTP session over the shared context.
  PublishResult publish(const std::string& record_json);
  // A kept-alive client of the public DB over the same TLS context, for its read API (the
  // transparency log's endpoints, docs/transparency.md "Clients"); one thread at a time.
  std::unique_ptr<core::http::Client> client() const;
  const std::string& url() const { return m_url; }

 private:
  std::string m_url;
  Poco::Net::Context::Ptr m_context;
};

}  // namespace keyline::station
