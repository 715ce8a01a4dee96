// The KPS HTTP API (docs/kps.md). Modules of the transfer seed, mapped: TMM (transfer management) is
// the handler's transfer routes, ACM (access control) is Policy, NM (notifications) is the
// notifications table and its routes, DB is PostgreSQL, and the crypto module is only signature and
// chain verification: the KPS holds no key that opens a transferred key.
// The transport is core::http::Server (deadlines and caps against slow and idle clients); /metrics and
// a second /healthz are on the operations listener (--ops-listen), never on the API's.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <botan/x509cert.h>

#include <cctype>
#include <chrono>
#include <functional>
#include <cstdio>
#include <ctime>
#include <map>
#include <unordered_set>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>
#include <string_view>

#include "keyline/core/cert_profile.h"
#include "keyline/core/cplc.h"
#include "keyline/core/device_auth.h"
#include "keyline/core/hpke.h"
#include "keyline/core/event_log.h"
#include "keyline/core/http.h"
#include "keyline/core/http_server.h"
#include "keyline/core/http_service.h"
#include "keyline/core/log_sink.h"
#include "keyline/core/pq.h"
#include "keyline/core/secret_input.h"
#include "keyline/kps/kps.h"
#include "keyline/kps/policy.h"
#include "nonce_cache.h"
#include "metrics.h"

namespace keyline::kps {
namespace {

namespace http = core::http;
using http::Reply;
using http::Request;

constexpr const char* kProblemBase = "https://keyline.example/problems/kps/";
// enc || 32-byte key || tag is 80 bytes; a little room for longer application keys, no more.
constexpr std::size_t kMaxCiphertext = 4096;
constexpr const char* kTime = "to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";

const http::Problems problem{kProblemBase};
using http::json_reply;

std::string q(const std::string& s) { return "\"" + http::json_escape(s) + "\""; }

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string ts_col(const char* col) {
  char buf[160];
  std::snprintf(buf, sizeof buf, kTime, col);
  return buf;
}

using Log = core::LogSink;  // one JSON object per line

struct Shared {
  Config config;
  Policy policy;
  std::vector<Botan::X509_Certificate> anchors;
  std::unique_ptr<core::pq::Pool> pool;
  NonceCache nonces;
  std::unique_ptr<Log> log;
  std::unique_ptr<http::EventLog> events;  // connection-layer events, rate-limited into `log`
  Metrics metrics;
  std::function<http::ServerStats()> public_stats;  // for /metrics
};

struct Transfer {
  std::string id, source, target, label, state, chain_pem, requested_at, delivered_at, acknowledged_at;
  std::string json() const {
    std::string j = "{\"id\":" + q(id) + ",\"source\":" + q(source) + ",\"target\":" + q(target) +
                    ",\"label\":" + q(label) + ",\"state\":" + q(state) + ",\"transport_certificates\":" +
                    q(chain_pem) + ",\"requested_at\":" + q(requested_at);
    if (!delivered_at.empty()) j += ",\"delivered_at\":" + q(delivered_at);
    if (!acknowledged_at.empty()) j += ",\"acknowledged_at\":" + q(acknowledged_at);
    return j + ",\"key_uri\":" + q("/v1/transfers/" + id + "/key") + "}";
  }
};

std::string transfer_select() {
  return "SELECT id::text, source_chip, target_chip, label, state, transport_chain, " + ts_col("requested_at") +
         ", " + ts_col("delivered_at") + ", " + ts_col("acknowledged_at") + " FROM transfers WHERE id = $1::uuid";
}

std::optional<Transfer> load_transfer(core::pq::Connection& c, const std::string& id, bool for_update = false) {
  auto r = c.exec(transfer_select() + (for_update ? " FOR UPDATE" : ""), {id});
  if (r.empty()) return std::nullopt;
  Transfer t;
  t.id = r.text(0, 0);
  t.source = r.text(0, 1);
  t.target = r.text(0, 2);
  t.label = r.text(0, 3);
  t.state = r.text(0, 4);
  t.chain_pem = r.text(0, 5);
  t.requested_at = r.text(0, 6);
  t.delivered_at = r.text(0, 7);
  t.acknowledged_at = r.text(0, 8);
  return t;
}

void notify(core::pq::Transaction& tx, const std::string& chip, const std::string& reason, const std::string& uri,
            const std::string& transfer_id) {
  tx.exec("INSERT INTO notifications (chip, reason, uri, transfer_id) VALUES ($1, $2, $3, $4::uuid)",
          {chip, reason, uri, transfer_id});
}

bool is_uuid(const std::string& s) {
  static const std::regex re("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$");
  return std::regex_match(s, re);
}

bool is_label(const std::string& s) {
  static const std::regex re("^[A-Za-z0-9._-]{1,64}$");
  return std::regex_match(s, re);
}

class Api {
 public:
  explicit Api(Shared& s) : m_s(s) {}

  // One request: the reply, its log line and its count. Never throws.
  Reply handle(const Request& req) {
    const auto t0 = std::chrono::steady_clock::now();
    std::string who = "-";
    const Reply reply = problem.guarded([&] { return dispatch(req, who); });
    const auto elapsed = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
    m_s.metrics.observe(reply.status);
    m_s.log->line(http::access_line(req, reply, elapsed, {{"chip", who}}));
    return reply;
  }

 private:
  Reply dispatch(const Request& req, std::string& who) {
    const auto parts = http::path_segments(req.path);
    const std::string& method = req.method;
    if (parts.size() == 1 && parts[0] == "healthz") {
      if (method != "GET") return problem.method_not_allowed("GET");
      m_s.pool->acquire()->exec("SELECT 1");
      return json_reply(200, "{\"status\":\"ok\"}");
    }
    if (parts.size() < 2 || parts[0] != "v1" || (parts[1] != "transfers" && parts[1] != "notifications"))
      return problem(404, "not-found", "no such resource");

    // Every /v1 route is a device's: read the (bounded) body, then check the signature over it.
    // The server refuses a larger body before reading it (ServerLimits::max_body_bytes = body_limit).
    const std::string& body = req.body;
    if (body.size() > m_s.config.body_limit) return problem.too_large(m_s.config.body_limit);
    core::device_auth::Verified dev;
    const std::int64_t now = std::time(nullptr);
    try {
      dev = core::device_auth::verify_request([&](const std::string& h) { return req.get(lower(h)); }, method,
                                              req.target, body, m_s.anchors, now, m_s.config.max_skew);
    } catch (const core::Error& e) {
      Reply r = problem(401, "device-auth-failed",
                        "sign the request with a device identity key whose chain the KPS trusts (docs/kps.md)");
      r.log_detail = std::to_string(e.numeric()) + " " + e.what();
      return r;
    }
    const auto use = m_s.nonces.first_use(dev.nonce, dev.timestamp + m_s.config.max_skew, now);
    if (use == NonceCache::Use::Replayed) {
      Reply r = problem(401, "device-auth-failed", "a request is signed once: this nonce was seen already");
      r.log_detail = "replayed nonce";
      return r;
    }
    if (use == NonceCache::Use::Full) {
      Reply r = problem.unavailable("too many signed requests in the replay window; retry later", "5");
      r.log_detail = "nonce cache full";
      return r;
    }
    who = dev.chip_id.str();

    if (parts[1] == "notifications") {
      if (parts.size() == 2) {
        if (method != "GET") return problem.method_not_allowed("GET");
        return notifications(who);
      }
      if (parts.size() == 4 && parts[3] == "read") {
        if (method != "POST") return problem.method_not_allowed("POST");
        return mark_read(who, parts[2]);
      }
      return problem(404, "not-found", "no such resource");
    }
    if (parts.size() == 2) {
      if (method != "POST") return problem.method_not_allowed("POST");
      return request_transfer(req, dev, body);
    }
    if (!is_uuid(parts[2])) return problem(404, "not-found", "no such transfer");
    const std::string& id = parts[2];
    if (parts.size() == 3) {
      if (method != "GET") return problem.method_not_allowed("GET");
      auto c = m_s.pool->acquire();
      auto t = load_transfer(*c, id);
      if (!t || (t->source != who && t->target != who)) return problem(404, "not-found", "no such transfer");
      return json_reply(200, t->json());
    }
    if (parts.size() == 4 && parts[3] == "key") {
      if (method == "POST") return deliver(req, who, id, body);
      if (method == "GET") return fetch_key(who, id);
      return problem.method_not_allowed("GET, POST");
    }
    if (parts.size() == 4 && parts[3] == "ack") {
      if (method != "POST") return problem.method_not_allowed("POST");
      return acknowledge(who, id);
    }
    return problem(404, "not-found", "no such resource");
  }

  // E1 and E2 (AC1) and E3: the target asks; the policy decides; the source is notified.
  Reply request_transfer(const Request& req, const core::device_auth::Verified& dev, const std::string& body) {
    if (!http::has_media_type(req, "application/json"))
      return problem(415, "unsupported-media-type", "send the request as application/json");
    std::string source_text, label, chain_pem;
    try {
      Poco::JSON::Parser parser;
      const auto obj = parser.parse(body).extract<Poco::JSON::Object::Ptr>();
      source_text = obj->getValue<std::string>("source");
      label = obj->getValue<std::string>("label");
      chain_pem = obj->getValue<std::string>("transport_certificates");
    } catch (const std::exception&) {
      return problem(400, "bad-request", "expected {\"source\", \"label\", \"transport_certificates\"} as strings");
    }
    std::string source;
    try {
      source = core::ChipId::parse(source_text).str();
    } catch (const core::Error&) {
      return problem(400, "bad-chip-id", "source is a chip ID of 20 hexadecimal digits");
    }
    if (!is_label(label)) return problem(400, "bad-label", "a label is 1-64 of A-Z a-z 0-9 . _ -");
    const std::string target = dev.chip_id.str();
    if (!m_s.policy.may_request(source, target)) {
      Reply r = problem(403, "access-denied", "the access policy does not let this device request from that source");
      r.log_detail = "AC1 refused " + source + " -> " + target;
      return r;
    }
    // Transport key information (S2): the target's own transport certificate, checked here as the
    // source will check it again (the source trusts only its ROM root, not the KPS).
    std::string canonical;
    try {
      const auto certs = core::parse_certificates_pem(chain_pem);
      if (certs.size() > 4) throw core::FormatError(core::ErrorCode::BadCertificate, "too many certificates");
      core::verify_chain(certs[0], {certs.begin() + 1, certs.end()}, m_s.anchors);
      std::unique_ptr<Botan::Public_Key> key(certs[0].subject_public_key());
      if (key->algo_name() != "Curve25519")
        throw core::FormatError(core::ErrorCode::BadCertificate, "not an X25519 transport certificate");
      if (core::read_identity(certs[0]).chip_id.str() != target)
        throw core::FormatError(core::ErrorCode::BadCertificate, "the transport certificate names another chip");
      for (const auto& c : certs) canonical += core::to_pem(c);
    } catch (const std::exception& e) {
      Reply r = problem(422, "bad-transport-certificate",
                        "transport_certificates must be this device's X25519 transport certificate and its issuers");
      r.log_detail = e.what();
      return r;
    }
    auto c = m_s.pool->acquire();
    Transfer t;
    core::pq::run_transaction(*c, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
      auto r = tx.exec(
          "INSERT INTO transfers (id, source_chip, target_chip, label, state, transport_chain) "
          "VALUES (gen_random_uuid(), $1, $2, $3, 'requested', $4) RETURNING id::text",
          {source, target, label, canonical});
      const std::string id = r.text(0, 0);
      notify(tx, source, "transfer-requested", "/v1/transfers/" + id, id);
      tx.commit();
      t = *load_transfer(*c, id);
    });
    Reply r = json_reply(201, t.json());
    r.headers.push_back({"Location", "/v1/transfers/" + t.id});
    r.log_detail = "requested " + source + " -> " + target + " label " + label;
    return r;
  }

  // E5 and E6 (AC2) and E7: the source uploads the sealed key; the policy decides again; the target
  // is notified.
  Reply deliver(const Request& req, const std::string& who, const std::string& id, const std::string& body) {
    if (!http::has_media_type(req, "application/octet-stream"))
      return problem(415, "unsupported-media-type", "send the sealed key as application/octet-stream");
    if (body.size() < core::hpke::kEncSize + core::hpke::kTagSize + 1 || body.size() > kMaxCiphertext)
      return problem(400, "bad-ciphertext", "the sealed key is HPKE enc (32) || ciphertext || tag (16)");
    auto c = m_s.pool->acquire();
    std::optional<Reply> refusal;
    std::string target;
    core::pq::run_transaction(*c, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
      refusal.reset();
      auto t = load_transfer(tx.connection(), id, true);
      if (!t || (t->source != who && t->target != who)) {
        refusal = problem(404, "not-found", "no such transfer");
        return;
      }
      if (t->source != who) {
        refusal = problem(403, "not-the-source", "only the source device delivers the key");
        return;
      }
      if (t->state != "requested") {
        refusal = problem(409, "wrong-state", "the key was delivered already (state " + t->state + ")");
        return;
      }
      if (!m_s.policy.may_deliver(t->source, t->target)) {
        refusal = problem(403, "access-denied", "the access policy does not let this device deliver to that target");
        refusal->log_detail = "AC2 refused " + t->source + " -> " + t->target;
        return;
      }
      tx.exec("UPDATE transfers SET state = 'delivered', ciphertext = $2, delivered_at = now() WHERE id = $1::uuid",
              {id, core::Bytes(body.begin(), body.end())});
      notify(tx, t->target, "key-delivered", "/v1/transfers/" + id + "/key", id);
      tx.commit();
      target = t->target;
    });
    if (refusal) return *refusal;
    Reply r = json_reply(200, "{\"id\":" + q(id) + ",\"state\":\"delivered\"}");
    r.log_detail = "delivered to " + target + " (" + std::to_string(body.size()) + " bytes sealed)";
    return r;
  }

  // E8 and E9: the target fetches the sealed key.
  Reply fetch_key(const std::string& who, const std::string& id) {
    auto c = m_s.pool->acquire();
    auto r = c->exec("SELECT target_chip, source_chip, state, ciphertext FROM transfers WHERE id = $1::uuid", {id});
    if (r.empty() || (r.text(0, 0) != who && r.text(0, 1) != who)) return problem(404, "not-found", "no such transfer");
    if (r.text(0, 0) != who) return problem(403, "not-the-target", "only the target device fetches the key");
    const std::string state = r.text(0, 2);
    if (state == "acknowledged") return problem(410, "gone", "the key was acknowledged and deleted");
    if (state != "delivered") return problem(409, "wrong-state", "the source has not delivered the key yet");
    const auto ct = r.bytea(0, 3);
    return http::reply(200, "application/octet-stream", std::string(ct.begin(), ct.end()), {{"Cache-Control", "no-store"}});
  }

  // After E10: the target has the key; the ciphertext is deleted and the source learns it.
  Reply acknowledge(const std::string& who, const std::string& id) {
    auto c = m_s.pool->acquire();
    std::optional<Reply> refusal;
    core::pq::run_transaction(*c, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
      refusal.reset();
      auto t = load_transfer(tx.connection(), id, true);
      if (!t || (t->source != who && t->target != who)) {
        refusal = problem(404, "not-found", "no such transfer");
        return;
      }
      if (t->target != who) {
        refusal = problem(403, "not-the-target", "only the target device acknowledges");
        return;
      }
      if (t->state == "acknowledged") return;  // a repeated acknowledgement changes nothing
      if (t->state != "delivered") {
        refusal = problem(409, "wrong-state", "nothing was delivered yet");
        return;
      }
      tx.exec("UPDATE transfers SET state = 'acknowledged', ciphertext = NULL, acknowledged_at = now() "
              "WHERE id = $1::uuid", {id});
      notify(tx, t->source, "key-acknowledged", "/v1/transfers/" + id, id);
      tx.commit();
    });
    if (refusal) return *refusal;
    return json_reply(200, "{\"id\":" + q(id) + ",\"state\":\"acknowledged\"}");
  }

  Reply notifications(const std::string& who) {
    auto c = m_s.pool->acquire();
    auto r = c->exec("SELECT id, reason, uri, COALESCE(transfer_id::text, ''), " + ts_col("created_at") +
                         " FROM notifications WHERE chip = $1 AND read_at IS NULL ORDER BY id LIMIT 100",
                     {who});
    std::string j = "{\"notifications\":[";
    for (int i = 0; i < r.rows(); ++i) {
      if (i) j += ",";
      j += "{\"id\":" + r.text(i, 0) + ",\"reason\":" + q(r.text(i, 1)) + ",\"uri\":" + q(r.text(i, 2)) +
           ",\"transfer_id\":" + q(r.text(i, 3)) + ",\"created_at\":" + q(r.text(i, 4)) + "}";
    }
    return json_reply(200, j + "]}");
  }

  Reply mark_read(const std::string& who, const std::string& id) {
    if (id.empty() || id.size() > 18 || id.find_first_not_of("0123456789") != std::string::npos)
      return problem(404, "not-found", "no such notification");
    auto c = m_s.pool->acquire();
    auto r = c->exec("UPDATE notifications SET read_at = COALESCE(read_at, now()) WHERE id = $1::bigint AND chip = $2",
                     {id, who});
    if (r.affected() == 0) return problem(404, "not-found", "no such notification");
    return json_reply(200, "{\"id\":" + id + ",\"read\":true}");
  }

  Shared& m_s;
};

void check_settings(const Config& c) {
  if (c.db.empty()) throw core::ConfigError(core::ErrorCode::Config, "--db is required");
  c.check();
  if (c.db_pool < 1) throw core::ConfigError(core::ErrorCode::Config, "--db-pool must be positive");
  if (c.tls_cert.empty() || c.tls_key.empty())
    throw core::ConfigError(core::ErrorCode::Config, "HTTPS needs --tls-cert and --tls-key");
}

void load_trust_and_policy(Shared& s, const Config& config) {
  for (const auto& t : config.trust)
    for (auto& c : core::load_certificates_pem(t)) s.anchors.push_back(std::move(c));
  if (s.anchors.empty()) throw core::ConfigError(core::ErrorCode::Config, "--trust: no manufacturer root given");
  try {
    if (!config.policy.empty()) s.policy = Policy::load(config.policy);
    for (const auto& a : config.allow) s.policy.allow(a);
  } catch (const core::FormatError& e) {
    // A policy that does not parse is a configuration error (exit 2), not bad input from a peer.
    throw core::ConfigError(core::ErrorCode::Config, e.what());
  }
  if (s.policy.rules() == 0)
    std::fprintf(stderr, "keyline-kps: warning: the policy allows nothing (give --policy or --allow)\n");
}

// Devices authenticate by signing each request (core/device_auth.h), not with TLS client certificates,
// so the handshake asks for none.
http::ServerOptions public_options(const Config& c) {
  return http::public_listener("keyline-kps", c.listen, c, c.body_limit, c.trusted_proxies, {c.tls_cert, c.tls_key, {}});
}

Reply handle_ops(Shared& s, const Request& req) {
  return problem.guarded([&] {
    if (req.path == "/metrics") {
      if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
      return http::metrics_reply(s.metrics.render(s.public_stats()));
    }
    if (req.path == "/healthz") {
      if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
      s.pool->acquire()->exec("SELECT 1");
      return json_reply(200, "{\"status\":\"ok\"}");
    }
    return problem(404, "not-found", "no such resource");
  });
}

void log_event(Shared& s, const http::Event& event, const char* listener) {
  if (std::string_view(listener) == "public") s.metrics.observe_event(event);
  s.events->write(event, listener);
}

}  // namespace

int serve(const Config& config) {
  check_settings(config);
  Shared s;
  s.config = config;
  load_trust_and_policy(s, config);
  const http::ServerOptions public_listener = public_options(config);  // the TLS files are readable
  s.log = std::make_unique<Log>(config.log);
  s.events = std::make_unique<http::EventLog>(*s.log);
  Api api_handler(s);
  http::Server api(
      public_listener, [&api_handler](const Request& q) { return api_handler.handle(q); },
      [&s](const http::Event& e) { log_event(s, e, "public"); });
  http::Server ops(
      http::operations_listener("keyline-kps-ops", config.ops_listen), [&s](const Request& q) { return handle_ops(s, q); },
      [&s](const http::Event& e) { log_event(s, e, "ops"); });
  s.public_stats = [&api] { return api.stats(); };
  if (!config.db_password_file.empty()) core::export_pgpassword(core::read_secret_file(config.db_password_file));
  s.pool = std::make_unique<core::pq::Pool>(config.db, static_cast<std::size_t>(config.db_pool));
  s.pool->acquire()->exec("SELECT 1 FROM transfers LIMIT 1");  // reachable and migrated, or fail now

  return http::serve_until_stopped("keyline-kps", api, "HTTPS", ops);
}

}  // namespace keyline::kps
