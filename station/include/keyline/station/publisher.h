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
