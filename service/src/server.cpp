// The device API of keyline-service (docs/service.md, docs/api.md "Device service API"): a device
// opens a session with its chip ID and posts the answers to each batch of APDUs. The transport is
// core::http::Server; /metrics and /healthz are on the operations listener.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <botan/hash.h>
#include <botan/system_rng.h>

#include <chrono>
#include <ctime>
#include <memory>

#include "keyline/core/event_log.h"
#include "keyline/core/http.h"
#include "keyline/core/http_service.h"
#include "keyline/core/log_sink.h"
#include "keyline/core/pq.h"
#include "keyline/core/secret_input.h"
#include "keyline/service/errors.h"
#include "keyline/service/service.h"
#include "metrics.h"
#include "sessions.h"
#include "static_keys.h"
#include "token.h"

namespace keyline::service {
namespace {

namespace http = core::http;
using http::Reply;
using http::Request;

const http::Problems problem{"https://keyline.example/problems/service/"};
constexpr std::size_t kMaxAnswers = 512;

std::string q(const std::string& s) { return "\"" + http::json_escape(s) + "\""; }

std::string now_iso() {
  char buf[32];
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string commands_json(const std::vector<core::CommandApdu>& commands) {
  std::string j = "[";
  for (std::size_t i = 0; i < commands.size(); ++i) {
    const auto bytes = core::encode_command(commands[i]);
    j += (i ? ",\"" : "\"") + core::to_hex(bytes.data(), bytes.size()) + "\"";
  }
  return j + "]";
}

struct Shared {
  Config config;
  PublicDb public_db;
  std::shared_ptr<core::Pkcs11Token> token;
  std::unique_ptr<core::pq::Pool> pool;
  std::unique_ptr<SessionTable> sessions;
  std::unique_ptr<core::LogSink> log;
  std::unique_ptr<http::EventLog> events;
  Metrics metrics;
  std::function<http::ServerStats()> public_stats;
};

// A JSON object body, or nullopt (the reply is set).
Poco::JSON::Object::Ptr json_body(const Request& req, Reply& error) {
  if (!http::has_media_type(req, "application/json")) {
    error = problem(415, "unsupported-media-type", "send application/json");
    return nullptr;
  }
  try {
    Poco::JSON::Parser parser;
    auto v = parser.parse(req.body);
    auto o = v.extract<Poco::JSON::Object::Ptr>();
    if (o) return o;
  } catch (...) {
  }
  error = problem(400, "bad-body", "the body is not a JSON object");
  return nullptr;
}

class Api {
 public:
  explicit Api(Shared& s) : m_s(s) {}

  Reply handle(const Request& req) {
    const auto t0 = std::chrono::steady_clock::now();
    std::string chip = "-";
    const Reply reply = problem.guarded([&] { return dispatch(req, chip); });
    const auto elapsed =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
    m_s.metrics.observe(reply.status);
    m_s.log->line(http::access_line(req, reply, elapsed, {{"chip", chip}}));
    return reply;
  }

 private:
  Reply dispatch(const Request& req, std::string& chip) {
    const auto parts = http::path_segments(req.path);
    if (parts.size() == 1 && parts[0] == "healthz") {
      if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
      return http::json_reply(200, "{\"status\":\"ok\"}");
    }
    if (parts.size() < 3 || parts.size() > 4 || parts[0] != "v1" || parts[1] != "device" ||
        parts[2] != "sessions")
      return problem(404, "not-found", "no such resource");
    if (req.method != "POST") return problem.method_not_allowed("POST");
    if (req.body.size() > m_s.config.body_limit) return problem.too_large(m_s.config.body_limit);
    return parts.size() == 3 ? open_session(req, chip) : step(req, parts[3], chip);
  }

  // The device and its pending jobs; a device the service DB has not seen is fetched from the public
  // DB (verified to the root) and cached first.
  std::optional<std::pair<Device, std::vector<Job>>> known_device(const core::ChipId& chip) {
    const int limit = m_s.config.jobs_per_session;
    {
      auto c = m_s.pool->acquire();
      if (auto d = find_device_with_jobs(*c, chip, limit)) return d;
    }
    auto fetched = fetch_device(m_s.public_db, chip);
    if (!fetched) return std::nullopt;
    auto c = m_s.pool->acquire();
    save_device(*c, fetched->first, fetched->second);
    return find_device_with_jobs(*c, chip, limit);  // another session may have saved it first
  }

  Reply open_session(const Request& req, std::string& who) {
    Reply error;
    const auto body = json_body(req, error);
    if (!body) return error;
    const std::string chip_hex = body->optValue<std::string>("chip_id", "");
    if (!core::ChipId::is_valid(chip_hex))
      return problem(400, "bad-chip-id", "chip_id is 20 upper-case hex digits");
    const auto chip = core::ChipId::parse(chip_hex);
    who = chip.str();
    std::optional<std::pair<Device, std::vector<Job>>> found;
    try {
      found = known_device(chip);
    } catch (const core::Error& e) {
      if (e.code() != errc::RecordInvalid) throw;
      Reply r = problem(403, "record-invalid",
                        "the device's public record does not verify to the manufacturer root");
      r.log_detail = e.what();
      return r;
    }
    if (!found) return problem(404, "unknown-device", "the public DB has no record of this chip");
    const Device* device = &found->first;
    std::vector<Job> jobs = std::move(found->second);
    Bytes challenge(16);
    Botan::system_rng().randomize(challenge.data(), challenge.size());
    auto comm = [this, chip](int version) {
      return comm_for_rotation(*m_s.token, m_s.config.token.master_label, version, chip);
    };
    auto live = std::make_shared<LiveSession>(
        *device, HostSession(chip, device->key_version, std::move(jobs), challenge, comm), now_iso());
    const std::string commands = commands_json(live->host.first_batch());
    const std::string id = m_s.sessions->add(live);
    return http::json_reply(201, "{\"session\":" + q(id) + ",\"commands\":" + commands + "}");
  }

  static std::optional<std::vector<core::ResponseApdu>> answers(const Poco::JSON::Object::Ptr& body) {
    const auto arr = body->getArray("responses");
    if (!arr || arr->size() > kMaxAnswers) return std::nullopt;
    std::vector<core::ResponseApdu> out;
    for (std::size_t i = 0; i < arr->size(); ++i) {
      const auto v = arr->get(static_cast<unsigned>(i));
      if (!v.isString()) return std::nullopt;
      const auto bytes = core::from_hex(v.extract<std::string>());
      out.push_back(core::decode_response(bytes));
    }
    return out;
  }

  Reply step(const Request& req, const std::string& id, std::string& who) {
    std::shared_ptr<LiveSession> s;
    const auto found = m_s.sessions->find(id, s);
    if (found == SessionTable::Found::Unknown) return problem(404, "no-session", "no such session");
    if (found == SessionTable::Found::Expired)
      return problem(410, "session-expired", "the session expired; open a new one");
    std::lock_guard<std::mutex> g(s->mutex);
    who = s->device.chip.str();
    auto digest = Botan::HashFunction::create_or_throw("SHA-256")->process(req.body);
    const std::string seen = core::to_hex(digest.data(), digest.size());
    if (s->done || !s->seen.insert(seen).second)
      return problem(409, "step-used", "this step of the session was taken already; open a new session");
    Reply error;
    const auto body = json_body(req, error);
    if (!body) return error;
    std::optional<std::vector<core::ResponseApdu>> list;
    try {
      list = answers(body);
    } catch (const core::FormatError&) {
    } catch (const Poco::Exception&) {
    }
    if (!list) return problem(400, "bad-responses", "responses is an array of hex R-APDUs (data || SW)");
    if (s->step == 1) {
      auto next = s->host.second_batch(*list, [&](int kvn) {
        return std::make_unique<DeviceStaticKeys>(m_s.token, m_s.config.token.master_label, kvn,
                                                  s->device.chip, s->device.imei);
      });
      if (next) {
        s->step = 2;
        return http::json_reply(200, "{\"commands\":" + commands_json(*next) + "}");
      }
    } else {
      s->host.finish(*list);
    }
    return end(*s);
  }

  Reply end(LiveSession& s) {
    s.done = true;
    const auto& result = s.host.result();
    const std::string json = result.json(s.host.jobs());
    {
      auto c = m_s.pool->acquire();
      record_session(*c, s.device, s.started_at, result, json);
    }
    m_s.metrics.session_end(result.ok);
    Reply r = http::json_reply(200, "{\"done\":true,\"result\":" + json + "}");
    if (!result.ok) r.log_detail = result.error;
    return r;
  }

  Shared& m_s;
};

Reply handle_ops(Shared& s, const Request& req) {
  return problem.guarded([&] {
    if (req.path == "/metrics") {
      if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
      return http::metrics_reply(s.metrics.render(s.public_stats(), s.sessions->size()));
    }
    if (req.path == "/healthz") {
      if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
      s.pool->acquire()->exec("SELECT 1");
      return http::json_reply(200, "{\"status\":\"ok\"}");
    }
    return problem(404, "not-found", "no such resource");
  });
}

void check_settings(const Config& c) {
  c.check();
  if (c.db.empty()) throw core::ConfigError(core::ErrorCode::Config, "--db is required");
  if (c.public_db.empty()) throw core::ConfigError(core::ErrorCode::Config, "--public-db is required");
  if (c.tls_cert.empty() || c.tls_key.empty())
    throw core::ConfigError(core::ErrorCode::Config, "HTTPS needs --tls-cert and --tls-key");
  if (c.db_pool < 1 || c.token_sessions < 1 || c.session_ttl_s < 1 || c.jobs_per_session < 1)
    throw core::ConfigError(
        core::ErrorCode::Config,
        "--db-pool, --token-sessions, --session-ttl and --jobs-per-session must be positive");
}

}  // namespace

struct Server::Impl {
  explicit Impl(const Config& config)
      : listener(prepare(shared, config)),
        handler(shared),
        api(
            listener, [this](const Request& r) { return handler.handle(r); },
            [this](const http::Event& e) {
              shared.metrics.observe_event(e);
              shared.events->write(e, "public");
            }),
        ops(
            http::operations_listener("keyline-service-ops", config.ops_listen),
            [this](const Request& r) { return handle_ops(shared, r); },
            [this](const http::Event& e) { shared.events->write(e, "ops"); }) {
    shared.public_stats = [this] { return api.stats(); };
  }

  static http::ServerOptions prepare(Shared& s, const Config& config) {
    check_settings(config);
    s.config = config;
    s.public_db = {config.public_db, config.public_db_ca, load_trust(config.trust)};
    auto listener = http::public_listener("keyline-service", config.listen, config, config.body_limit,
                                          config.trusted_proxies, {config.tls_cert, config.tls_key, {}});
    s.log = std::make_unique<core::LogSink>(config.log);
    s.events = std::make_unique<http::EventLog>(*s.log);
    s.sessions = std::make_unique<SessionTable>(std::chrono::seconds(config.session_ttl_s));
    s.token = open_token(config.token, static_cast<std::size_t>(config.token_sessions));
    if (!config.db_password_file.empty())
      core::export_pgpassword(core::read_secret_file(config.db_password_file));
    s.pool = std::make_unique<core::pq::Pool>(config.db, static_cast<std::size_t>(config.db_pool));
    s.pool->acquire()->exec("SELECT 1 FROM job LIMIT 1");  // reachable and migrated, or fail now
    return listener;
  }

  Shared shared;
  http::ServerOptions listener;
  Api handler;
  http::Server api;
  http::Server ops;
};

Server::Server(const Config& config) : m_impl(std::make_unique<Impl>(config)) {}
Server::~Server() = default;
void Server::start() {
  m_impl->api.start();
  m_impl->ops.start();
}
void Server::stop() {
  m_impl->api.stop();
  m_impl->ops.stop();
}
std::uint16_t Server::port() const { return m_impl->api.port(); }
std::uint16_t Server::ops_port() const { return m_impl->ops.port(); }
int Server::run_until_stopped() {
  return http::serve_until_stopped("keyline-service", m_impl->api, "HTTPS", m_impl->ops);
}

int serve(const Config& config) {
  Server server(config);
  return server.run_until_stopped();
}

}  // namespace keyline::service
