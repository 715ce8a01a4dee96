// keyline-backupdb serve: the public listener (HTTPS, or plain HTTP behind a proxy) and the
// operations listener (/metrics, /healthz), both core::http::Server, whose deadlines and caps keep
// slow, silent and idle clients from taking the server (docs/decisions.md, "The servers' own acceptor").
#include "keyline/backupdb/server.h"

#include <algorithm>
#include <cstdio>
#include <memory>

#include "api.h"
#include "keyline/backupdb/log.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/http_service.h"
#include "keyline/core/secret_input.h"

namespace keyline::backupdb {
namespace {

namespace http = core::http;

void check_settings(const Config& c) {
  if (c.db.empty()) throw core::ConfigError(core::ErrorCode::Config, "--db is required");
  c.check();
  if (c.db_pool < 1 || c.rate_clients < 1)
    throw core::ConfigError(core::ErrorCode::Config, "--db-pool and --rate-clients must be positive");
  if (!c.tlog.disabled && !c.tlog.configured())
    throw core::ConfigError(core::ErrorCode::Config,
                            "serve keeps the transparency log: give --log-token-module, --log-token-label and "
                            "--log-token-pin-file (docs/transparency.md), or --no-log");
  if (c.tlog.batch_entries < 1 || c.tlog.batch_ms < 1 || c.tlog.max_batch < c.tlog.batch_entries)
    throw core::ConfigError(core::ErrorCode::Config, "the log batch settings must be positive");
  if (!c.plain_http && (c.tls_cert.empty() || c.tls_key.empty() || c.station_ca.empty()))
    throw core::ConfigError(core::ErrorCode::Config,
                            "HTTPS needs --tls-cert, --tls-key and --station-ca (or --plain-http)");
}

void load_anchors(Shared& s, const Config& config) {
  std::vector<Botan::X509_Certificate> anchors;
  for (const auto& t : config.trust) {
    for (auto& c : core::load_certificates_pem(t)) {
      s.anchors_pem += core::to_pem(c);
      anchors.push_back(std::move(c));
    }
  }
  if (anchors.empty()) throw core::ConfigError(core::ErrorCode::Config, "--trust: no device root certificate given");
  s.validator = std::make_unique<Validator>(std::move(anchors));
}

// The handshake asks for a client certificate without requiring one: reads stay public, and a
// wrong certificate gets a problem document from the publish handler, not a handshake failure.
http::ServerOptions public_options(const Config& config) {
  http::TlsFiles tls;
  if (!config.plain_http) tls = {config.tls_cert, config.tls_key, config.station_ca};
  return http::public_listener("keyline-backupdb", config.listen, config, config.body_limit, config.trusted_proxies, tls);
}

void open_store(Shared& s, const Config& config) {
  if (!config.db_password_file.empty()) core::export_pgpassword(core::read_secret_file(config.db_password_file));
  s.store = std::make_unique<Store>(config.db, static_cast<std::size_t>(config.db_pool), config.cache_entries,
                                    config.replicas, config.read_batch);
  if (!s.store->healthy()) throw core::DbError(core::ErrorCode::DbConnection, "database unreachable at start");
  if (config.preload) {
    const auto n = s.store->preload(config.cache_entries);
    std::fprintf(stdout, "keyline-backupdb: %zu records preloaded into the cache\n", n);
  }
}

// The log key on its token, the log's reader and the integrator thread (docs/transparency.md, "The
// public DB's log"). After open_store: the integrator's session takes the same password.
void open_log(Shared& s, const Config& config) {
  if (config.tlog.disabled) return;
  auto signer = open_log_signer(config.tlog);
  // Proof requests each take a session for the leaf lookup: half the record pool keeps them from
  // queueing behind one another under load (scripts/bench_tlog.sh measures the p99).
  const auto sessions = static_cast<std::size_t>(std::max(4, config.db_pool / 2));
  constexpr std::size_t kCachedTiles = 4096;  // at most 64 MiB (bundles of 256 entries of 62 bytes are 16 KiB)
  s.tlog = std::make_unique<LogReader>(config.db, sessions, kCachedTiles, &s.store->reads());
  s.integrator = std::make_unique<Integrator>(config.db, config.tlog, std::move(signer), *s.tlog, s.metrics, *s.log);
  s.integrator->start();
  std::fprintf(stdout, "keyline-backupdb: transparency log %s, key %s\n", config.tlog.origin.c_str(),
               config.tlog.key_label.c_str());
}

}  // namespace

int serve(const Config& config) {
  check_settings(config);
  Shared s;
  s.config = config;
  load_anchors(s, config);
  s.log = std::make_unique<core::LogSink>(config.log);
  s.events = std::make_unique<core::http::EventLog>(*s.log);
  s.limiter = std::make_unique<core::RateLimiter>(config.rate, config.rate_clients);
  if (!config.plain_http) {
    http::require_readable(config.station_ca, "--station-ca");
    s.stations = std::make_unique<StationAuthority>(
        load_station_authority(config.station_ca, config.station_deny, s.log.get()));
    if (!config.station_deny.empty())
      std::fprintf(stdout, "keyline-backupdb: station deny list %s, %zu entries\n", config.station_deny.c_str(),
                   s.stations->denied_entries());
  }
  const auto access = [&s](const http::Request& q, const http::Reply& r, std::chrono::microseconds t) {
    log_access(s, q, r, t);
  };
  auto options = public_options(config);
  options.admit = [&s](const http::Request& head) { return admit_public(s, head); };
  http::Server api(
      std::move(options), [&s](const http::Request& q) { return handle_public(s, q); },
      [&s](const http::Event& e) { log_event(s, e, "public"); }, access);
  http::Server ops(
      http::operations_listener("keyline-backupdb-ops", config.ops_listen), [&s](const http::Request& q) { return handle_ops(s, q); },
      [&s](const http::Event& e) { log_event(s, e, "ops"); }, access);
  s.public_stats = [&api] { return api.stats(); };
  open_store(s, config);
  open_log(s, config);

  return http::serve_until_stopped("keyline-backupdb", api, config.plain_http ? "HTTP" : "HTTPS", ops);
}

}  // namespace keyline::backupdb
