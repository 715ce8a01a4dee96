// What a service built on core::http::Server writes around its handlers, once for all of them (the
// public DB, the KPS, and the service server of issue #16): RFC 9457 problem documents under the
// service's type base, JSON replies, the guard that turns a handler's exception into 503 or 500
// without putting its text on the wire, path segments and media types, the access log line, the
// public listener's options with TLS, and the serve loop that runs until SIGINT or SIGTERM.
#pragma once

#include <chrono>
#include <csignal>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "keyline/core/http_server.h"

namespace keyline::core::http {

using Fields = std::vector<std::pair<std::string, std::string>>;

// Problem documents (RFC 9457) whose type URIs are `type_base` + slug, e.g.
// "https://keyline.example/problems/kps/" + "not-found". The detail is public: say what to change,
// never a library's or the database's own text (that goes to Reply::log_detail).
class Problems {
 public:
  explicit Problems(std::string type_base) : m_base(std::move(type_base)) {}

  // `extra` members are added as JSON strings (RFC 9457 section 3.2 extension members).
  Reply operator()(int status, const std::string& slug, const std::string& detail, const Fields& extra = {}) const;
  Reply method_not_allowed(const std::string& allow) const;  // 405 with Allow (RFC 9110 section 15.5.6)
  Reply too_large(std::size_t limit) const;                  // 413 "the body exceeds N bytes"
  Reply unavailable(const std::string& detail, const std::string& retry_after) const;  // 503 with Retry-After

  // Runs `handler`: a DbError becomes 503 `unavailable` (Retry-After: 1), any other exception 500
  // `internal`; the exception's code and text go to log_detail only.
  Reply guarded(const std::function<Reply()>& handler) const;

  const std::string& type_base() const noexcept { return m_base; }

 private:
  std::string m_base;
};

Reply reply(int status, std::string content_type, std::string body, Fields headers = {}, std::string log_detail = {});
// application/json, by default not to be stored by caches (answers about one device or the server now).
Reply json_reply(int status, std::string body, Fields headers = {{"Cache-Control", "no-store"}});

// The Prometheus text exposition (version 0.0.4) of an operations listener's /metrics, never cached.
Reply metrics_reply(std::string text);

// GET or HEAD: the methods of a read (the server sends HEAD's headers without the body).
bool is_read(const Request& request);

// "/v1/records/ABC" -> {"v1", "records", "ABC"}; empty segments are dropped.
std::vector<std::string> path_segments(const std::string& path);

// Whether the request's Content-Type names `type` ("application/json"), parameters aside.
bool has_media_type(const Request& request, std::string_view type);

// One access log line, a JSON object: ts, client, peer (when a trusted proxy forwarded), method,
// path, then `fields` (the service's own: route, chip), status, bytes, ms, detail (when the reply
// has one). Every value is escaped.
std::string access_line(const Request& request, const Reply& reply, std::chrono::microseconds elapsed,
                        const Fields& fields = {});

// ConfigError(Config) "cannot read FLAG PATH" unless the file opens for reading.
void require_readable(const std::string& path, const char* flag);

// The TLS files of a public listener; empty cert = plain HTTP (behind a TLS-terminating proxy).
struct TlsFiles {
  std::string cert;       // --tls-cert: the server's chain (PEM, leaf first)
  std::string key;        // --tls-key
  std::string client_ca;  // asks for (does not require) a client certificate from these CAs
};

// The public listener of a service: the operator's ListenerSettings with `body_limit` as the body
// cap (413 beyond, before the body is read), TLS from `tls` (files checked here).
ServerOptions public_listener(const std::string& name, const std::string& listen, const ListenerSettings& settings,
                              std::size_t body_limit, std::vector<std::string> trusted_proxies, const TlsFiles& tls);

// Starts `api` and `ops`, prints "PROGRAM: serving SCHEME on ADDR" and the operations line to stdout,
// waits for SIGINT or SIGTERM, stops both; returns the exit code 0. SIGPIPE is ignored (a client that
// hangs up must never kill the server) and the stop signals are blocked before the servers' threads
// start, so that they inherit the mask and only this thread takes them.
int serve_until_stopped(const std::string& program, Server& api, const char* scheme, Server& ops);

}  // namespace keyline::core::http
