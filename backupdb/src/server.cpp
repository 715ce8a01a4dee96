#include "keyline/backupdb/server.h"

#include <Poco/Crypto/X509Certificate.h>
#include <Poco/Delegate.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerRequestImpl.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/SSLManager.h>
#include <Poco/Net/SecureServerSocket.h>
#include <Poco/Net/SecureStreamSocket.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/Session.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/VerificationErrorArgs.h>
#include <Poco/ThreadPool.h>
#include <Poco/Timestamp.h>

#include <botan/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "keyline/backupdb/store.h"
#include "keyline/backupdb/validator.h"
#include "keyline/core/log_sink.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/cplc.h"
#include "keyline/core/http.h"
#include "keyline/core/imei.h"
#include "keyline/core/record.h"
#include "metrics.h"

namespace keyline::backupdb {
namespace {

using Poco::Net::HTTPServerRequest;
using Poco::Net::HTTPServerResponse;
namespace http = core::http;

constexpr const char* kImmutable = "public, max-age=31536000, immutable";
constexpr const char* kProblemBase = "https://keyline.example/problems/";

// What a handler answers; the caller writes it, counts it and logs it.
struct Reply {
  int status = 200;
  std::string content_type;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string log_detail;  // internal detail for the log line only, never sent
};

Reply problem(int status, const std::string& slug, const std::string& detail,
              const std::vector<std::pair<std::string, std::string>>& extra = {}) {
  Reply r;
  r.status = status;
  r.content_type = http::kProblemContentType;
  r.body = http::problem_json(status, http::reason_phrase(status), detail, kProblemBase + slug, extra);
  return r;
}

// Request log: one JSON object per line.
using AccessLog = core::LogSink;

// Token bucket per client key (RFC 6585 section 4 for the 429 answer).
class RateLimiter {
 public:
  explicit RateLimiter(double rate) : m_rate(rate), m_burst(rate < 1 ? 1 : rate) {}
  bool allow(const std::string& key) {
    if (m_rate <= 0) return true;
    const double now = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    std::lock_guard<std::mutex> g(m_mutex);
    if (m_buckets.size() > 100000) m_buckets.clear();  // bounded memory under a flood of addresses
    auto& b = m_buckets[key];
    if (b.last == 0) b = {m_burst, now};
    b.tokens = std::min(m_burst, b.tokens + (now - b.last) * m_rate);
    b.last = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

 private:
  struct Bucket {
    double tokens = 0;
    double last = 0;
  };
  double m_rate, m_burst;
  std::mutex m_mutex;
  std::unordered_map<std::string, Bucket> m_buckets;
};

// Which client certificates the station CA issued. Checking means an ECDSA signature verification
// (X509_verify) per publish although a station presents the same certificate on every request, so
// positive answers are remembered by the certificate's exact DER, together with what the handler
// reads from it (subject, validity period, as Poco reads them). All of that depends only on those
// bytes and the fixed --client-ca list; validity in time is still compared with the clock on every
// request. Only station certificates are remembered (foreign ones are checked in full each time),
// so the set is small; the bound keeps memory fixed anyway.
class StationIssuers {
 public:
  static constexpr std::size_t kMaxRemembered = 4096;

  struct Facts {
    bool issued = false;
    std::string subject;  // Poco's subjectName()
    Poco::DateTime valid_from, expires_on;
  };

  void set_cas(Poco::Crypto::X509Certificate::List cas) { m_cas = std::move(cas); }

  Facts check(X509* peer) {
    std::string der = der_of(peer);
    if (!der.empty()) {
      std::lock_guard<std::mutex> g(m_mutex);
      if (const auto it = m_known.find(der); it != m_known.end()) return it->second;
    }
    const Poco::Net::X509Certificate cert(peer, true);  // shared: takes a reference of its own
    Facts f;
    f.subject = cert.subjectName();
    for (const auto& ca : m_cas) f.issued = f.issued || cert.issuedBy(ca);
    f.valid_from = cert.validFrom();
    f.expires_on = cert.expiresOn();
    if (f.issued && !der.empty()) {
      std::lock_guard<std::mutex> g(m_mutex);
      if (m_known.size() >= kMaxRemembered) m_known.clear();
      m_known.emplace(std::move(der), f);
    }
    return f;
  }

 private:
  static std::string der_of(X509* x) {
    const int n = i2d_X509(x, nullptr);
    if (n <= 0) return {};  // not encodable: never remembered, always checked in full
    std::string der(static_cast<std::size_t>(n), '\0');
    auto* p = reinterpret_cast<unsigned char*>(der.data());
    if (i2d_X509(x, &p) != n) return {};
    return der;
  }

  Poco::Crypto::X509Certificate::List m_cas;
  std::mutex m_mutex;
  std::unordered_map<std::string, Facts> m_known;
};

struct Shared {
  Config config;
  std::unique_ptr<Store> store;
  Metrics metrics;
  std::unique_ptr<AccessLog> log;
  std::unique_ptr<RateLimiter> limiter;
  std::unique_ptr<Validator> validator;  // holds the --trust anchors
  std::string anchors_pem;
  StationIssuers station_issuers;  // the --client-ca certificates
};

bool etag_matches(const HTTPServerRequest& req, const std::string& etag) {
  const std::string inm = req.get("If-None-Match", "");
  if (inm.empty()) return false;
  if (inm == "*") return true;
  // RFC 9110 section 13.1.2: a comma-separated list; weak comparison for If-None-Match.
  std::stringstream ss(inm);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto b = item.find_first_not_of(" \t");
    const auto e = item.find_last_not_of(" \t");
    if (b == std::string::npos) continue;
    std::string tag = item.substr(b, e - b + 1);
    if (tag.rfind("W/", 0) == 0) tag = tag.substr(2);
    if (tag == etag) return true;
  }
  return false;
}

Reply cacheable(const HTTPServerRequest& req, const std::string& etag, std::string content_type, std::string body) {
  Reply r;
  r.headers = {{"ETag", etag}, {"Cache-Control", kImmutable}};
  if (etag_matches(req, etag)) {
    r.status = 304;
    return r;
  }
  r.content_type = std::move(content_type);
  r.body = std::move(body);
  return r;
}

std::string read_body(HTTPServerRequest& req, std::size_t limit, bool& too_large) {
  std::string body;
  too_large = false;
  std::istream& in = req.stream();
  char buf[8192];
  while (in) {
    in.read(buf, sizeof buf);
    body.append(buf, static_cast<std::size_t>(in.gcount()));
    if (body.size() > limit) {
      too_large = true;
      return {};
    }
  }
  return body;
}

class Handler final : public Poco::Net::HTTPRequestHandler {
 public:
  explicit Handler(Shared& s) : m_s(s) {}

  void handleRequest(HTTPServerRequest& req, HTTPServerResponse& resp) override {
    const auto t0 = std::chrono::steady_clock::now();
    std::string route = "other";
    Reply reply;
    const std::string client = req.clientAddress().host().toString();
    try {
      reply = dispatch(req, route, client);
    } catch (const core::DbError& e) {
      reply = problem(503, "unavailable", "the database is not available; retry later");
      reply.headers.push_back({"Retry-After", "1"});
      reply.log_detail = std::to_string(e.numeric()) + " " + e.what();
    } catch (const std::exception& e) {
      reply = problem(500, "internal", "internal error");
      reply.log_detail = e.what();
    }
    // A request body we did not read would be parsed as the next request: close instead.
    if (req.hasContentLength() && req.getContentLength64() > 0 && !m_body_read) resp.setKeepAlive(false);
    if (req.getChunkedTransferEncoding() && !m_body_read) resp.setKeepAlive(false);
    resp.setStatus(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(reply.status));
    resp.setReason(http::reason_phrase(reply.status));
    for (const auto& [k, v] : reply.headers) resp.set(k, v);
    if (!reply.content_type.empty()) resp.setContentType(reply.content_type);
    resp.setContentLength(static_cast<std::streamsize>(reply.body.size()));
    if (req.getMethod() == "HEAD" || reply.status == 304) {
      resp.send();
    } else {
      resp.sendBuffer(reply.body.data(), reply.body.size());
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    m_s.metrics.observe(route, reply.status, secs);
    std::ostringstream line;
    char ts[32];
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    line << "{\"ts\":\"" << ts << "\",\"client\":\"" << http::json_escape(client) << "\",\"method\":\""
         << http::json_escape(req.getMethod()) << "\",\"path\":\"" << http::json_escape(req.getURI())
         << "\",\"route\":\"" << route << "\",\"status\":" << reply.status << ",\"bytes\":" << reply.body.size()
         << ",\"ms\":" << secs * 1000.0;
    if (!reply.log_detail.empty()) line << ",\"detail\":\"" << http::json_escape(reply.log_detail) << "\"";
    line << "}";
    m_s.log->line(line.str());
  }

 private:
  static std::vector<std::string> split_path(const std::string& uri) {
    std::string path = uri.substr(0, uri.find('?'));
    std::vector<std::string> parts;
    std::size_t i = 0;
    while (i < path.size()) {
      const auto j = path.find('/', i);
      if (j == std::string::npos) {
        parts.push_back(path.substr(i));
        break;
      }
      if (j > i) parts.push_back(path.substr(i, j - i));
      i = j + 1;
    }
    return parts;
  }

  static Reply method_not_allowed(const std::string& allow) {
    Reply r = problem(405, "method-not-allowed", "allowed: " + allow);
    r.headers.push_back({"Allow", allow});
    return r;
  }

  Reply dispatch(HTTPServerRequest& req, std::string& route, const std::string& client) {
    const auto parts = split_path(req.getURI());
    const std::string& method = req.getMethod();
    const bool get = method == "GET" || method == "HEAD";

    if (parts.size() == 1 && parts[0] == "healthz") {
      route = "healthz";
      if (!get) return method_not_allowed("GET, HEAD");
      if (!m_s.store->healthy()) return problem(503, "unavailable", "database unreachable");
      return Reply{200, "application/json", "{\"status\":\"ok\"}", {{"Cache-Control", "no-store"}}, {}};
    }
    if (parts.size() == 1 && parts[0] == "metrics") {
      route = "metrics";
      if (!get) return method_not_allowed("GET, HEAD");
      return Reply{200, "text/plain; version=0.0.4",
                   m_s.metrics.render(m_s.store->cache_hits(), m_s.store->cache_misses()), {}, {}};
    }
    if (parts.empty() || parts[0] != "v1") return problem(404, "not-found", "no such resource");

    if (parts.size() == 2 && parts[1] == "ca") {
      route = "ca";
      if (!get) return method_not_allowed("GET, HEAD");
      if (!m_s.limiter->allow(client)) return too_many();
      return Reply{200, "application/pem-certificate-chain", m_s.anchors_pem, {{"Cache-Control", "public, max-age=3600"}}, {}};
    }
    if (parts.size() == 2 && parts[1] == "records") {
      route = "publish";
      if (method != "POST") return method_not_allowed("POST");
      return publish(req, client);
    }
    if (parts.size() >= 3 && parts.size() <= 4 && parts[1] == "records") {
      const std::string sub = parts.size() == 4 ? parts[3] : "";
      if (sub.empty()) route = "record";
      else if (sub == "backup") route = "record_backup";
      else if (sub == "certificate") route = "record_certificate";
      else return problem(404, "not-found", "no such resource");
      if (!get) return method_not_allowed("GET, HEAD");
      if (!m_s.limiter->allow(client)) return too_many();
      std::string chip;
      try {
        chip = core::ChipId::parse(parts[2]).str();
      } catch (const core::Error&) {
        return problem(400, "bad-chip-id", "a chip ID is 20 hexadecimal digits");
      }
      auto rec = m_s.store->by_chip_id(chip);
      if (!rec) return problem(404, "not-found", "no record for this chip ID");
      return represent(req, *rec, sub);
    }
    if (parts.size() == 3 && parts[1] == "imei") {
      route = "imei";
      if (!get) return method_not_allowed("GET, HEAD");
      if (!m_s.limiter->allow(client)) return too_many();
      if (!core::Imei::is_valid(parts[2])) return problem(400, "bad-imei", "an IMEI is 15 digits with a Luhn check digit");
      auto rec = m_s.store->by_imei(parts[2]);
      if (!rec) return problem(404, "not-found", "no record for this IMEI");
      return represent(req, *rec, "");
    }
    return problem(404, "not-found", "no such resource");
  }

  static Reply too_many() {
    Reply r = problem(429, "rate-limited", "too many requests from this client");
    r.headers.push_back({"Retry-After", "1"});
    return r;
  }

  static Reply represent(const HTTPServerRequest& req, const StoredRecord& rec, const std::string& sub) {
    // Strong ETags (RFC 9110 section 8.8.3) from the record hash; each representation has its own.
    if (sub.empty()) return cacheable(req, "\"" + rec.record_hash + "\"", "application/json", rec.json);
    if (sub == "backup")
      return cacheable(req, "\"" + rec.record_hash + "-backup\"", "application/octet-stream",
                       std::string(rec.backup.begin(), rec.backup.end()));
    const std::string accept = req.get("Accept", "");
    const bool pem = accept.find("application/x-pem-file") != std::string::npos ||
                     accept.find("application/pem-certificate-chain") != std::string::npos;
    Reply r;
    if (pem) {
      r = cacheable(req, "\"" + rec.record_hash + "-pem\"", "application/x-pem-file",
                    Botan::PEM_Code::encode(rec.identity_der, "CERTIFICATE"));
    } else {
      // RFC 2585 section 4.1: application/pkix-cert is a DER certificate.
      r = cacheable(req, "\"" + rec.record_hash + "-der\"", "application/pkix-cert",
                    std::string(rec.identity_der.begin(), rec.identity_der.end()));
    }
    r.headers.push_back({"Vary", "Accept"});
    return r;
  }

  // 401 without a client certificate, 403 when it is not a current certificate of the station CA.
  std::optional<Reply> check_station(HTTPServerRequest& req, std::string& who) {
    if (!req.secure()) return problem(401, "client-certificate-required", "publishing needs mutual TLS");
    auto* impl = dynamic_cast<Poco::Net::HTTPServerRequestImpl*>(&req);
    if (!impl) return problem(401, "client-certificate-required", "publishing needs mutual TLS");
    Poco::Net::SecureStreamSocket ss(impl->socket());
    // The peer certificate straight from the TLS session (the X509 that SSL_get_peer_certificate
    // returns, without building a Poco certificate object from it on every request).
    const Poco::Net::Session::Ptr session = ss.currentSession();
    X509* peer = session ? SSL_SESSION_get0_peer(session->sslSession()) : nullptr;
    std::optional<Poco::Net::X509Certificate> from_poco;  // when the session does not say
    if (!peer) {
      if (!ss.havePeerCertificate())
        return problem(401, "client-certificate-required", "present a station certificate to publish");
      from_poco.emplace(ss.peerCertificate());
      peer = const_cast<X509*>(from_poco->certificate());
    }
    const StationIssuers::Facts facts = m_s.station_issuers.check(peer);
    who = facts.subject;
    if (!facts.issued) return problem(403, "not-a-station", "the client certificate is not from the station CA");
    const Poco::DateTime now;
    if (now < facts.valid_from || now > facts.expires_on)
      return problem(403, "certificate-expired", "the client certificate is not valid now");
    return std::nullopt;
  }

  Reply publish(HTTPServerRequest& req, const std::string& client) {
    std::string station;
    if (auto deny = check_station(req, station)) return *deny;
    if (!m_s.limiter->allow(station.empty() ? client : station)) return too_many();
    const std::string ctype = req.getContentType();
    if (ctype.substr(0, ctype.find(';')) != "application/json")
      return problem(415, "unsupported-media-type", "send the record as application/json");
    if (req.hasContentLength() && req.getContentLength64() > static_cast<Poco::Int64>(m_s.config.body_limit))
      return problem(413, "too-large", "the body exceeds " + std::to_string(m_s.config.body_limit) + " bytes");
    bool too_large = false;
    const std::string body = read_body(req, m_s.config.body_limit, too_large);
    m_body_read = !too_large;
    if (too_large)
      return problem(413, "too-large", "the body exceeds " + std::to_string(m_s.config.body_limit) + " bytes");
    core::Record rec;
    std::string hash;  // Record::hash, computed once by from_json
    try {
      rec = core::Record::from_json(body, &hash);
    } catch (const core::Error& e) {
      Reply r = problem(400, "bad-record", "the body is not a record", {{"code", std::to_string(e.numeric())}});
      r.log_detail = e.what();
      return r;
    }
    try {
      m_s.validator->validate(rec);
    } catch (const core::Error& e) {
      // The check that failed is public knowledge (the rules are in docs/api.md), so it is named.
      Reply r = problem(422, "record-invalid", e.what(), {{"code", std::to_string(e.numeric())}});
      r.log_detail = "station " + station;
      return r;
    }
    const auto res = m_s.store->publish(rec, hash);
    const std::string location = "/v1/records/" + rec.chip_id.str();
    std::string json = "{\"chip_id\":\"" + rec.chip_id.str() + "\",\"record_hash\":\"" + hash + "\"}";
    switch (res.outcome) {
      case PublishOutcome::Created:
        m_s.metrics.record_published();
        return Reply{201, "application/json", json, {{"Location", location}, {"ETag", "\"" + hash + "\""}},
                     "station " + station};
      case PublishOutcome::Identical:
        return Reply{200, "application/json", json, {{"Location", location}, {"ETag", "\"" + hash + "\""}},
                     "identical re-publish by " + station};
      case PublishOutcome::Conflict:
        break;
    }
    Reply r = problem(409, "conflict",
                      "a different record is already published for this " +
                          (res.conflict_on.empty() ? std::string("chip ID or IMEI") : res.conflict_on),
                      {{"published_hash", res.existing_hash},
                       {"submitted_hash", hash},
                       {"conflict_on", res.conflict_on},
                       {"code", std::to_string(static_cast<int>(errc::PublishConflict))}});
    r.log_detail = "station " + station;
    return r;
  }

  Shared& m_s;
  bool m_body_read = false;
};

class Factory final : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  explicit Factory(Shared& s) : m_s(s) {}
  Poco::Net::HTTPRequestHandler* createRequestHandler(const HTTPServerRequest&) override { return new Handler(m_s); }

 private:
  Shared& m_s;
};

// The TLS handshake accepts any client certificate (or none) so that reads stay public and a wrong
// certificate gets a 403 problem document instead of a bare handshake failure; the publish handler
// checks the issuer and validity itself.
struct AcceptAnyClientCert {
  void on_error(const void*, Poco::Net::VerificationErrorArgs& args) { args.setIgnoreError(true); }
};

std::string read_text(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw core::ConfigError(core::ErrorCode::Config, std::string("cannot read ") + what + " " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

int serve(const Config& config) {
  Shared s;
  s.config = config;
  if (config.db.empty()) throw core::ConfigError(core::ErrorCode::Config, "--db is required");
  if (config.threads < 1 || config.max_connections < 1 || config.db_pool < 1)
    throw core::ConfigError(core::ErrorCode::Config, "--threads, --max-connections and --db-pool must be positive");
  std::vector<Botan::X509_Certificate> anchors;
  for (const auto& t : config.trust) {
    auto certs = core::load_certificates_pem(t);
    for (auto& c : certs) {
      s.anchors_pem += core::to_pem(c);
      anchors.push_back(std::move(c));
    }
  }
  if (anchors.empty()) throw core::ConfigError(core::ErrorCode::Config, "--trust: no device root certificate given");
  s.validator = std::make_unique<Validator>(std::move(anchors));
  s.log = std::make_unique<AccessLog>(config.log);
  s.limiter = std::make_unique<RateLimiter>(config.rate);

  Poco::Net::SocketAddress addr;
  try {
    addr = Poco::Net::SocketAddress(config.listen);
  } catch (const Poco::Exception& e) {
    throw core::ConfigError(core::ErrorCode::Config, "bad --listen address " + config.listen);
  }

  AcceptAnyClientCert accept_any;
  std::unique_ptr<Poco::Net::ServerSocket> socket;
  if (config.plain_http) {
    socket = std::make_unique<Poco::Net::ServerSocket>(addr, 256);
  } else {
    if (config.tls_cert.empty() || config.tls_key.empty() || config.client_ca.empty())
      throw core::ConfigError(core::ErrorCode::Config, "HTTPS needs --tls-cert, --tls-key and --client-ca (or --plain-http)");
    read_text(config.tls_cert, "--tls-cert");
    read_text(config.tls_key, "--tls-key");
    read_text(config.client_ca, "--client-ca");
    Poco::Net::initializeSSL();
    try {
      s.station_issuers.set_cas(Poco::Crypto::X509Certificate::readPEM(config.client_ca));
    } catch (const Poco::Exception& e) {
      throw core::Error(errc::Tls, "--client-ca: " + e.displayText());
    }
    Poco::Net::Context::Params p;
    p.certificateFile = config.tls_cert;
    p.privateKeyFile = config.tls_key;
    p.caLocation = config.client_ca;
    p.loadDefaultCAs = false;
    p.verificationMode = Poco::Net::Context::VERIFY_RELAXED;  // ask for a client certificate, do not require one
    Poco::Net::Context::Ptr ctx;
    try {
      ctx = new Poco::Net::Context(Poco::Net::Context::TLS_SERVER_USE, p);
      ctx->requireMinimumProtocol(Poco::Net::Context::PROTO_TLSV1_2);
      ctx->enableSessionCache(true, "keyline-backupdb");
    } catch (const Poco::Exception& e) {
      throw core::Error(errc::Tls, "TLS server setup failed: " + e.displayText());
    }
    Poco::Net::SSLManager::instance().ServerVerificationError +=
        Poco::delegate(&accept_any, &AcceptAnyClientCert::on_error);
    socket = std::make_unique<Poco::Net::SecureServerSocket>(addr, 256, ctx);
  }
  s.store = std::make_unique<Store>(config.db, static_cast<std::size_t>(config.db_pool), config.cache_entries);
  if (!s.store->healthy()) throw core::DbError(core::ErrorCode::DbConnection, "database unreachable at start");
  if (config.preload) {
    const auto n = s.store->preload(config.cache_entries);
    std::fprintf(stdout, "keyline-backupdb: %zu records preloaded into the cache\n", n);
  }

  // OpenSSL writes with write(2), so a client that hangs up would raise SIGPIPE and kill the server.
  std::signal(SIGPIPE, SIG_IGN);
  // Block the stop signals in every thread (the pool threads inherit the mask) and wait for them here.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  auto* params = new Poco::Net::HTTPServerParams;
  params->setMaxThreads(config.threads);
  params->setMaxQueued(config.max_connections);
  params->setKeepAlive(true);
  params->setMaxKeepAliveRequests(0);  // unlimited: a station or wrk connection lives for the run
  params->setKeepAliveTimeout(Poco::Timespan(15, 0));
  params->setTimeout(Poco::Timespan(30, 0));
  Poco::ThreadPool pool(2, config.threads);
  Poco::Net::HTTPServer server(new Factory(s), pool, *socket, params);
  server.start();
  std::fprintf(stdout, "keyline-backupdb: serving %s on %s\n", config.plain_http ? "HTTP" : "HTTPS",
               socket->address().toString().c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  server.stopAll(true);
  pool.joinAll();
  if (!config.plain_http)
    Poco::Net::SSLManager::instance().ServerVerificationError -=
        Poco::delegate(&accept_any, &AcceptAnyClientCert::on_error);
  return 0;
}

}  // namespace keyline::backupdb
