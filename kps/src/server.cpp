// The KPS HTTP API (docs/kps.md). Modules of the transfer seed, mapped: TMM (transfer management) is
// transfers.cpp, ACM (access control) is Policy, NM (notifications) is notifications.cpp and
// webhooks.cpp, DB is PostgreSQL, and the crypto module is signing.cpp (answers signed on a token) plus
// signature and chain checks: the KPS holds no key that opens a transferred key.
// This file authenticates the caller (a device's signed request, or an owner's Bearer token), routes,
// signs the answer, and runs the instance: listeners and background loops.
#include <pthread.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <set>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <thread>

#include "background.h"
#include "context.h"
#include "keyline/core/device_auth.h"
#include "keyline/core/http.h"
#include "keyline/core/secret_input.h"
#include "signing.h"

namespace keyline::kps {
namespace {

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// Every device-authentication failure has the same document on the wire: a distinct text for a replay
// told whoever sent one that its signature was valid. The reason goes to the log line only.
Reply device_auth_failed(const std::string& reason) {
  return refused(401, "device-auth-failed",
                 "sign the request with a device identity key whose chain the KPS trusts (docs/kps.md)", reason);
}

// The client's rate (--rate, --burst), checked before anything that costs: the device signature check,
// the database and the token signature. 429 with Retry-After (RFC 6585 section 4).
std::optional<Reply> over_rate(Context& c, const Request& req) {
  const auto v = c.limiter->take(req.client_address, std::chrono::steady_clock::now());
  if (v.allowed) return std::nullopt;
  Reply r = refused(429, "rate-limited", "too many requests from this client", "rate limit");
  r.headers.push_back({"Retry-After", std::to_string(std::max<long long>(1, static_cast<long long>(std::ceil(v.wait_s))))});
  return r;
}

// A device (signed request) or an owner (Bearer token); a reply when neither holds.
std::optional<Reply> authenticate(Context& c, const Request& req, Caller& who) {
  const std::string auth = req.get("authorization");
  const bool device = !req.get("keyline-signature").empty();
  if (!auth.empty()) {
    if (device) return problem(400, "bad-request", "a request is either signed by a device or carries a token, not both");
    const auto account = auth.rfind("Bearer ", 0) == 0 ? account_of_token(c, auth.substr(7)) : std::nullopt;
    if (!account) return refused(401, "token-refused", "the token is not valid", "owner token refused");
    who.account = account->first;
    who.name = "account:" + account->second;
    return std::nullopt;
  }
  const std::int64_t now = c.now();
  core::device_auth::Verified dev;
  try {
    dev = core::device_auth::verify_request([&](const std::string& h) { return req.get(lower(h)); }, req.method,
                                            req.target, req.body, c.anchors, now, c.config.max_skew,
                                            c.chains.get());
  } catch (const core::Error& e) {
    return device_auth_failed(std::to_string(e.numeric()) + " " + e.what());
  }
  // Kept in PostgreSQL for the whole window the timestamp is accepted in: a replay to a restarted KPS,
  // or to another KPS on the same database, is refused as well.
  if (!first_use_of_nonce(c, dev.chip_id.str(), dev.nonce, dev.timestamp + c.config.max_skew))
    return device_auth_failed("replayed nonce");
  who.chip = dev.chip_id.str();
  who.name = who.chip;
  return std::nullopt;
}

Reply dispatch(Context& c, const Request& req, std::string& who_name) {
  const auto parts = http::path_segments(req.path);
  if (parts.size() == 1 && parts[0] == "healthz") {
    if (req.method != "GET") return problem.method_not_allowed("GET");
    c.pool->acquire()->exec("SELECT 1");
    return http::json_reply(200, "{\"status\":\"ok\"}");
  }
  static const std::set<std::string> kRoutes = {"transfers", "groups", "notifications", "devices"};
  if (parts.size() < 2 || parts[0] != "v1" || !kRoutes.count(parts[1])) return problem(404, "not-found", "no such resource");
  // The server refuses a larger body before reading it (ServerLimits::max_body_bytes = body_limit).
  if (req.body.size() > c.config.body_limit) return problem.too_large(c.config.body_limit);
  Caller who;
  if (auto bad = authenticate(c, req, who)) return *bad;
  who_name = who.name;
  if (parts[1] == "transfers") return transfers_route(c, req, who, parts);
  if (parts[1] == "groups") return groups_route(c, req, who, parts);
  if (parts[1] == "notifications") return notifications_route(c, req, who, parts);
  return devices_route(c, req, who, parts);
}

// One request: the reply (signed under /v1 once the caller authenticated), its log line and its count.
// Never throws. An answer to a request that did not authenticate (over its rate, unknown path, 400,
// 405, 413, 401) is not signed: each signature is a token operation, and an anonymous flood must not
// buy them (docs/kps.md "Signed answers"); the agent treats an unsigned answer as no answer.
Reply handle(Context& c, const Request& req) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string who = "-";
  Reply reply = problem.guarded([&] {
    if (auto limited = over_rate(c, req)) return *limited;
    return dispatch(c, req, who);
  });
  if (c.signer && who != "-" && req.path.rfind("/v1/", 0) == 0) {  // who is set once authenticate() passed
    try {
      c.signer->sign_answer(reply, req, c.now());
    } catch (const std::exception& e) {
      // An answer the device cannot authenticate is refused by it anyway; say so plainly.
      reply = problem.unavailable("the KPS cannot sign its answer now; retry later", "5");
      reply.log_detail = std::string("signing failed: ") + e.what();
    }
  }
  const auto elapsed = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
  c.metrics.observe(reply.status);
  c.log->line(http::access_line(req, reply, elapsed, {{"chip", who}}));
  return reply;
}

Reply handle_ops(Context& c, const Request& req) {
  return problem.guarded([&] {
    if (req.path == "/metrics") {
      if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
      return http::metrics_reply(c.metrics.render(c.public_stats(), std::max(0, c.waiting.load())));
    }
    if (req.path == "/healthz") {
      if (!http::is_read(req)) return problem.method_not_allowed("GET, HEAD");
      c.pool->acquire()->exec("SELECT 1");
      return http::json_reply(200, "{\"status\":\"ok\"}");
    }
    return problem(404, "not-found", "no such resource");
  });
}

void check_settings(const Config& c) {
  auto bad = [](const std::string& m) { return core::ConfigError(core::ErrorCode::Config, m); };
  if (c.db.empty()) throw bad("--db is required");
  c.check();
  if (c.db_pool < 1) throw bad("--db-pool must be positive");
  if (c.rate < 0 || c.burst < 0 || c.rate_clients < 1)
    throw bad("--rate and --burst must not be negative, --rate-clients must be positive");
  if (c.tls_cert.empty() || c.tls_key.empty()) throw bad("HTTPS needs --tls-cert and --tls-key");
  if (c.transfer_ttl < 60 || c.transfer_ttl > 30 * 24 * 3600) throw bad("--transfer-ttl is 60 to 2592000 seconds");
  if (c.purge_interval_s < 1 || c.purge_interval_s > 60) throw bad("--purge-interval-s is 1 to 60");
  if (c.webhook_tries < 1 || c.webhook_tries > 20) throw bad("--webhook-tries is 1 to 20");
  // A long poll holds a worker: at least one worker must stay free for everything else.
  if (c.max_waiters < 0 || (c.max_waiters > 0 && c.max_waiters >= c.threads))
    throw bad("--max-waiters must be below --threads");
  if (!c.backupdb.empty() && c.backupdb.rfind("https://", 0) == 0 && c.backupdb_ca.empty())
    throw bad("--backupdb over https needs --backupdb-ca");
}

void load_trust_and_policy(Context& s, const Config& config) {
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

}  // namespace

struct Instance::Impl {
  Context c;
  std::unique_ptr<http::Server> api, ops;
  std::atomic<bool> stop{false};
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<std::thread> loops;

  explicit Impl(const Config& config) {
    check_settings(config);
    c.config = config;
    if (c.config.max_waiters <= 0) c.config.max_waiters = std::max(1, static_cast<int>(config.threads) / 2);
    load_trust_and_policy(c, config);
    if (config.sign.enabled()) c.signer = std::make_shared<AnswerSigner>(config.sign);
    c.limiter = std::make_unique<core::RateLimiter>(config.rate, config.rate_clients, config.burst);
    const auto public_listener = http::public_listener("keyline-kps", config.listen, config, config.body_limit,
                                                       config.trusted_proxies, {config.tls_cert, config.tls_key, {}});
    c.log = std::make_unique<core::LogSink>(config.log);
    c.events = std::make_unique<http::EventLog>(*c.log);
    api = std::make_unique<http::Server>(
        public_listener, [this](const Request& q) { return handle(c, q); },
        [this](const http::Event& e) {
          c.metrics.observe_event(e);
          c.events->write(e, "public");
        });
    ops = std::make_unique<http::Server>(
        http::operations_listener("keyline-kps-ops", config.ops_listen), [this](const Request& q) { return handle_ops(c, q); },
        [this](const http::Event& e) { c.events->write(e, "ops"); });
    c.public_stats = [this] { return api->stats(); };
    if (!config.db_password_file.empty()) core::export_pgpassword(core::read_secret_file(config.db_password_file));
    c.pool = std::make_unique<core::pq::Pool>(config.db, static_cast<std::size_t>(config.db_pool));
    c.pool->acquire()->exec("SELECT 1 FROM audit LIMIT 1");  // reachable and migrated to v2, or fail now
  }

  // Runs pass every `period` until stop; a failing pass is logged and tried again next period.
  void every(std::chrono::milliseconds period, const char* name, std::function<void()> pass) {
    loops.emplace_back([this, period, name, pass] {
      while (!stop) {
        try {
          pass();
        } catch (const std::exception& e) {
          c.log->line("{\"event\":\"" + std::string(name) + "-failed\",\"detail\":" + q(e.what()) + "}");
        }
        std::unique_lock<std::mutex> lock(mutex);
        cv.wait_for(lock, period, [this] { return stop.load(); });
      }
    });
  }

  void start() {
    stop = false;
    c.stopping = false;
    api->start();
    ops->start();
    loops.emplace_back([this] { listen_for_notices(c, stop); });
    every(std::chrono::seconds(c.config.purge_interval_s), "purge",
          [this] { c.metrics.expired += static_cast<std::uint64_t>(purge_pass(c)); });
    every(std::chrono::milliseconds(250), "webhook", [this] { webhook_pass(c); });
  }

  void halt() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = true;
      c.stopping = true;
    }
    cv.notify_all();
    c.waiters.wake();
    api->stop();
    ops->stop();
    for (auto& t : loops) t.join();
    loops.clear();
    webhook_drain(c);
  }
};

Instance::Instance(const Config& config) : m_impl(std::make_unique<Impl>(config)) {}
Instance::~Instance() {
  if (m_impl && !m_impl->loops.empty()) m_impl->halt();
}
void Instance::start() { m_impl->start(); }
void Instance::stop() {
  if (!m_impl->loops.empty()) m_impl->halt();
}
std::uint16_t Instance::port() const { return m_impl->api->port(); }
std::uint16_t Instance::ops_port() const { return m_impl->ops->port(); }

// As core::http::serve_until_stopped, but the long polls and loops are told to stop before the
// listeners wait for their handlers (a held poll would otherwise keep a worker up to 30 s).
int Instance::serve_until_stopped() {
  std::signal(SIGPIPE, SIG_IGN);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);  // every thread started below inherits the mask
  start();
  std::fprintf(stdout, "keyline-kps: serving HTTPS on %s\n", m_impl->api->address().c_str());
  std::fprintf(stdout, "keyline-kps: operations (metrics, healthz) on http://%s\n", m_impl->ops->address().c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  stop();
  return 0;
}

int serve(const Config& config) {
  Instance instance(config);
  return instance.serve_until_stopped();
}

}  // namespace keyline::kps
