#include "keyline/core/http_service.h"

#include <pthread.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "keyline/core/error.h"
#include "keyline/core/event_log.h"
#include "keyline/core/http.h"
#include "keyline/core/json_log.h"

namespace keyline::core::http {

Reply Problems::operator()(int status, const std::string& slug, const std::string& detail, const Fields& extra) const {
  Reply r;
  r.status = status;
  r.content_type = kProblemContentType;
  r.body = problem_json(status, reason_phrase(status), detail, m_base + slug, extra);
  return r;
}

Reply Problems::method_not_allowed(const std::string& allow) const {
  Reply r = (*this)(405, "method-not-allowed", "allowed: " + allow);
  r.headers.push_back({"Allow", allow});
  return r;
}

Reply Problems::too_large(std::size_t limit) const {
  return (*this)(413, "too-large", "the body exceeds " + std::to_string(limit) + " bytes");
}

Reply Problems::unavailable(const std::string& detail, const std::string& retry_after) const {
  Reply r = (*this)(503, "unavailable", detail);
  r.headers.push_back({"Retry-After", retry_after});
  return r;
}

Reply Problems::guarded(const std::function<Reply()>& handler) const {
  try {
    return handler();
  } catch (const DbError& e) {
    Reply r = unavailable("the database is not available; retry later", "1");
    r.log_detail = std::to_string(e.numeric()) + " " + e.what();
    return r;
  } catch (const std::exception& e) {
    Reply r = (*this)(500, "internal", "internal error");
    r.log_detail = e.what();
    return r;
  }
}

Reply reply(int status, std::string content_type, std::string body, Fields headers, std::string log_detail) {
  Reply r;
  r.status = status;
  r.content_type = std::move(content_type);
  r.body = std::move(body);
  r.headers = std::move(headers);
  r.log_detail = std::move(log_detail);
  return r;
}

Reply json_reply(int status, std::string body, Fields headers) {
  return reply(status, "application/json", std::move(body), std::move(headers));
}

Reply metrics_reply(std::string text) {
  return reply(200, "text/plain; version=0.0.4", std::move(text), {{"Cache-Control", "no-store"}});
}

bool is_read(const Request& request) { return request.method == "GET" || request.method == "HEAD"; }

std::vector<std::string> path_segments(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '/');)
    if (!p.empty()) parts.push_back(p);
  return parts;
}

bool has_media_type(const Request& request, std::string_view type) {
  const std::string ctype = request.get("content-type");
  return std::string_view(ctype).substr(0, ctype.find(';')) == type;
}

std::string access_line(const Request& request, const Reply& reply, std::chrono::microseconds elapsed,
                        const Fields& fields) {
  const auto q = [](const std::string& s) { return "\"" + json_escape(s) + "\""; };
  std::ostringstream line;
  // The common head of every JSON log line (core/json_log.h), then the request's own fields.
  const std::string head = log::format_line(std::chrono::system_clock::now(),
                                            reply.status >= 500 ? log::Level::Error : log::Level::Info,
                                            log::program(), "request", "", "", log::Fields());
  line << head.substr(0, head.size() - 1) << ",\"client\":" << q(request.client_address);
  if (request.client_address != request.peer_address) line << ",\"peer\":" << q(request.peer_address);
  line << ",\"method\":" << q(request.method) << ",\"path\":" << q(request.target);
  for (const auto& [name, value] : fields) line << "," << q(name) << ":" << q(value);
  line << ",\"status\":" << reply.status << ",\"bytes\":" << reply.body.size()
       << ",\"ms\":" << static_cast<double>(elapsed.count()) / 1000.0;
  if (!reply.log_detail.empty()) line << ",\"detail\":" << q(reply.log_detail);
  line << "}";
  return line.str();
}

void require_readable(const std::string& path, const char* flag) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ConfigError(ErrorCode::Config, std::string("cannot read ") + flag + " " + path);
}

ServerOptions public_listener(const std::string& name, const std::string& listen, const ListenerSettings& settings,
                              std::size_t body_limit, std::vector<std::string> trusted_proxies, const TlsFiles& tls) {
  ServerOptions o;
  o.name = name;
  o.listen = listen;
  o.trusted_proxies = std::move(trusted_proxies);
  o.limits = settings.limits(body_limit);
  if (!tls.cert.empty()) {
    require_readable(tls.cert, "--tls-cert");
    require_readable(tls.key, "--tls-key");
    o.tls_cert_file = tls.cert;
    o.tls_key_file = tls.key;
    o.client_ca_file = tls.client_ca;
  }
  return o;
}

int serve_until_stopped(const std::string& program, Server& api, const char* scheme, Server& ops) {
  std::signal(SIGPIPE, SIG_IGN);
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  api.start();
  ops.start();
  std::fprintf(stdout, "%s: serving %s on %s\n", program.c_str(), scheme, api.address().c_str());
  std::fprintf(stdout, "%s: operations (metrics, healthz) on http://%s\n", program.c_str(), ops.address().c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  api.stop();
  ops.stop();
  return 0;
}

}  // namespace keyline::core::http
