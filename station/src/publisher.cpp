#include "keyline/station/publisher.h"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include "keyline/core/error.h"
#include "keyline/core/http.h"
#include "keyline/station/keys.h"
#include "keyline/station/tls_token_key.h"

namespace keyline::station {

bool refused_for_good(int http_status) noexcept {
  switch (http_status) {
    case 400: case 409: case 413: case 415: case 422: return true;
    default: return false;
  }
}

std::string problem_summary(int http_status, const std::string& body) {
  std::string out = "HTTP " + std::to_string(http_status);
  try {
    auto obj = Poco::JSON::Parser().parse(body).extract<Poco::JSON::Object::Ptr>();
    if (!obj.isNull())
      out += ": " + obj->optValue<std::string>("title", "") + " " + obj->optValue<std::string>("detail", "");
  } catch (const Poco::Exception&) {
    // Not a problem document: the status says enough.
  } catch (const std::exception&) {
  }
  return out;
}

Publisher::Publisher(const StationConfig& config) : m_url(config.backupdb_url) {
  if (m_url.empty())
    throw core::ConfigError(core::ErrorCode::Config, "no public DB URL: set --backupdb or KEYLINE_BACKUPDB_URL");
  if (m_url.rfind("https://", 0) == 0) {
    m_context = make_token_client_context(pki_path(config, pki_file::tls_trust), pki_path(config, pki_file::station_tls),
                                          TokenKeyRef{config.hsm_module, config.token_label, key_label::station_tls,
                                                      read_pin(config)});
  } else {
    // Publishing needs the station's client certificate; plain HTTP is refused rather than degraded.
    throw core::ConfigError(core::ErrorCode::Config, "the public DB URL must be https:// (publishing uses mutual TLS)");
  }
}

PublishResult Publisher::publish(const std::string& record_json) {
  core::http::ClientOptions opt;
  opt.base_url = m_url;
  opt.context = m_context;
  opt.connect_attempts = 2;
  PublishResult result;
  try {
    core::http::Client client(opt);
    const auto r = client.post("/v1/records", record_json, "application/json");
    result.status = r.status;
    if (r.status == 201) {
      result.outcome = PublishOutcome::Published;
    } else if (r.status == 200) {
      result.outcome = PublishOutcome::AlreadyPublished;
    } else if (r.status >= 400 && r.status < 500 && r.status != 408 && r.status != 429) {
      result.outcome = PublishOutcome::Rejected;
    } else {
      result.outcome = PublishOutcome::Unreachable;
    }
    if (result.outcome != PublishOutcome::Published && result.outcome != PublishOutcome::AlreadyPublished)
      result.detail = problem_summary(r.status, r.body);
  } catch (const core::Error& e) {
    result.outcome = PublishOutcome::Unreachable;
    result.detail = e.what();
  }
  return result;
}

}  // namespace keyline::station
