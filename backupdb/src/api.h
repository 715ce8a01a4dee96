// The public DB's HTTP API (docs/api.md) as functions of a complete request: the public listener's
// routes, the operations listener's routes (/metrics, /healthz), and the access log and metrics
// both listeners share. The transport is core::http::Server (backupdb/src/server.cpp).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "keyline/backupdb/config.h"
#include "keyline/backupdb/store.h"
#include "keyline/backupdb/validator.h"
#include "keyline/core/http_server.h"
#include "keyline/core/log_sink.h"
#include "keyline/core/event_log.h"
#include "keyline/core/rate_limiter.h"
#include "integrator.h"
#include "log_store.h"
#include "metrics.h"
#include "station_auth.h"

namespace keyline::backupdb {

struct Shared {
  Config config;
  std::unique_ptr<Store> store;
  Metrics metrics;
  std::unique_ptr<core::LogSink> log;
  std::unique_ptr<core::http::EventLog> events;  // connection-layer events, rate-limited into `log`
  std::unique_ptr<core::RateLimiter> limiter;
  std::unique_ptr<Validator> validator;      // holds the --trust anchors
  std::string anchors_pem;
  std::unique_ptr<StationAuthority> stations;  // the --station-ca issuers; null on plain HTTP
  std::function<core::http::ServerStats()> public_stats;  // for /metrics
  std::unique_ptr<LogReader> tlog;            // the transparency log's reads; null with --no-log
  std::unique_ptr<Integrator> integrator;     // null with --no-log
};

// The route label of a request (metrics and log), from its path alone.
std::string route_of(const core::http::Request& req);

// The public listener's head check (core::http::AdmitHook): a publish's refusal for want of a station
// certificate, before its body is read; nullopt for anything else.
std::optional<core::http::Reply> admit_public(Shared& s, const core::http::Request& head);
// The public listener. Never throws: failures become problem documents, their detail goes to
// Reply::log_detail.
core::http::Reply handle_public(Shared& s, const core::http::Request& req);
// The operations listener: /metrics and /healthz, 404 for anything else.
core::http::Reply handle_ops(Shared& s, const core::http::Request& req);

// Whether a certificate request's Accept field (RFC 9110 section 12.5.1) asks for PEM: a PEM type
// (application/x-pem-file, application/pem-certificate-chain) named with a q above 0 and not below
// application/pkix-cert's. A media range with q=0 is "not acceptable"; a range with a malformed q is
// ignored. Otherwise the certificate is DER.
bool accepts_pem(std::string_view accept);

// Whether a request-target is the one spelling of its path a cache should key: no empty segment (no
// "//", no trailing '/'), and no query unless `query_allowed` (the two routes that take parameters).
bool canonical_target(std::string_view target, bool query_allowed);

// The generic detail sent for a record that fails validation with this code (the full text of the
// failure goes to the log only: it quotes certificate names and library messages).
const char* record_invalid_detail(core::ErrorCode code) noexcept;

// One access log line and the request metrics, for a reply of either listener.
void log_access(Shared& s, const core::http::Request& req, const core::http::Reply& reply,
                std::chrono::microseconds elapsed);
// One log line (and, for the public listener, a count) for what the connection layer did on its own.
void log_event(Shared& s, const core::http::Event& event, const char* listener);

}  // namespace keyline::backupdb
