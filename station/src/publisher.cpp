#include "keyline/station/publisher.h"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include "keyline/core/error.h"
#include "keyline/core/http.h"
#include "keyline/station/keys.h"
#include "keyline/station/tls_token_key.h"

namespace keyline::station {

PublishOutcome publish_outcome(int http_status) noexcept {
  switch (http_status) {
    case 201: return PublishOutcome::Published;
    case 200: return PublishOutcome::AlreadyPublished;
    case 400: case 409: case 413: case 415: case 422: return PublishOutcome::Refused;
    case 408: case 429: return PublishOutcome::Unreachable;
    default: return http_status >= 400 && http_status < 500 ? PublishOutcome::Rejected : PublishOutcome::Unreachable;
  }
}

std::optional<std::uint64_t> publish_leaf_index(const std::string& body) noexcept {
  try {
    Poco::JSON::Parser parser;
    parser.setDepth(4);
    const auto obj = parser.parse(body).extract<Poco::JSON::Object::Ptr>();
    if (obj.isNull() || !obj->has("leaf_index")) return std::nullopt;
    const Poco::Dynamic::Var v = obj->get("leaf_index");
    if (!v.isInteger() || (v.isSigned() && v.convert<std::int64_t>() < 0)) return std::nullopt;
    return v.convert<std::uint64_t>();
  } catch (const std::exception&) {
    return std::nullopt;  // Poco::Exception too: not a publish answer with a leaf index
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
                                          TokenKeyRef{config.hsm_module, config.token_label, station_tls_label(config),
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
    result.outcome = publish_outcome(r.status);
    if (result.outcome != PublishOutcome::Published && result.outcome != PublishOutcome::AlreadyPublished)
      result.detail = problem_summary(r.status, r.body);
    else
      result.leaf_index = publish_leaf_index(r.body);
  } catch (const core::Error& e) {
    result.outcome = PublishOutcome::Unreachable;
    result.detail = e.what();
  }
  return result;
}

std::unique_ptr<core::http::Client> Publisher::client() const {
  core::http::ClientOptions opt;
  opt.base_url = m_url;
  opt.context = m_context;
  opt.connect_attempts = 2;
  return std::make_unique<core::http::Client>(opt);
}

}  // namespace keyline::station
