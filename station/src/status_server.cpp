// The line's operations listener and line page (status_server.h).
#include "status_server.h"

#include <chrono>
#include <sstream>
#include <thread>

#include "keyline/core/error.h"
#include "keyline/core/http_service.h"
#include "status_page_html.h"  // generated from status_page.html (station/CMakeLists.txt)

namespace keyline::station::line_detail {

namespace http = core::http;

namespace {

const http::Problems problem{"https://keyline.example/problems/station/"};

// The page loads nothing from elsewhere and runs only its own inline script; nothing may frame it.
const http::Fields kPageHeaders{
    {"Cache-Control", "no-store"},
    {"Content-Security-Policy",
     "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; "
     "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"},
    {"X-Content-Type-Options", "nosniff"},
    {"Referrer-Policy", "no-referrer"},
};

// The page's listener: a few handler threads (waiting /events hold them) and few connections.
http::ServerOptions page_listener(const std::string& listen) {
  auto o = http::operations_listener("station-page", listen);
  o.limits.workers = StatusServers::kWorkers;
  o.limits.max_connections = 32;
  o.limits.max_per_client = 16;
  o.limits.max_per_other_client = 4;
  o.limits.loopback_reserved = 12;  // the operator's browser on 127.0.0.1 still gets the page
  o.limits.max_queued = 32;
  o.limits.head_timeout = std::chrono::milliseconds(5000);
  o.limits.write_timeout = std::chrono::milliseconds(5000);
  o.limits.keep_alive_idle = std::chrono::milliseconds(10000);
  return o;
}

}  // namespace

bool parse_event_id(const std::string& id, std::uint64_t& seq, std::int64_t& ended) {
  const auto dot = id.find('.');
  // 18 digits each at most: both fit their types, so the conversions below cannot throw.
  if (dot == std::string::npos || dot == 0 || dot > 18 || id.size() - dot - 1 == 0 ||
      id.size() - dot - 1 > 18)
    return false;
  for (std::size_t i = 0; i < id.size(); ++i)
    if (i != dot && (id[i] < '0' || id[i] > '9')) return false;
  seq = std::stoull(id.substr(0, dot));
  ended = std::stoll(id.substr(dot + 1));
  return true;
}

std::string listen_address(const std::string& spec) {
  if (!spec.empty() && spec.find(':') == std::string::npos) return "127.0.0.1:" + spec;
  return spec;
}

StatusServers::StatusServers(const std::string& ops_listen, const std::string& status_listen,
                             const LineMetrics& metrics, std::ostream& out)
    : m_metrics(metrics), m_latest(std::make_shared<Snapshot>()) {
  if (!ops_listen.empty()) {
    auto o = http::operations_listener("station-ops", listen_address(ops_listen));
    m_ops = std::make_unique<http::Server>(
        o, [this](const http::Request& r) { return ops(r); },
        [this](const http::Event& e) { m_ops_connections.observe(e); });
    m_ops->start();
    out << "line: operations (metrics, healthz) on http://" << m_ops->address() << "\n";
  }
  if (!status_listen.empty()) {
    m_page = std::make_unique<http::Server>(
        page_listener(listen_address(status_listen)), [this](const http::Request& r) { return page(r); },
        [this](const http::Event& e) { m_page_connections.observe(e); });
    m_page->start();
    out << "line: line page on http://" << m_page->address() << "/\n";
  }
  out << std::flush;
}

StatusServers::~StatusServers() {
  if (m_page) {
    {
      std::lock_guard<std::mutex> l(m_mutex);
      m_final = true;
    }
    m_cv.notify_all();
    std::this_thread::sleep_for(std::chrono::milliseconds(kFinalGraceMs));
  }
  {
    std::lock_guard<std::mutex> l(m_mutex);
    m_stop = true;
  }
  m_cv.notify_all();
  if (m_page) m_page->stop();
  if (m_ops) m_ops->stop();
}

void StatusServers::publish(std::string snapshot_json, std::string gauges, std::int64_t ended) {
  auto s = std::make_shared<Snapshot>();
  s->json = std::move(snapshot_json);
  s->gauges = std::move(gauges);
  s->ended = ended;
  {
    std::lock_guard<std::mutex> l(m_mutex);
    s->seq = m_latest->seq + 1;
    m_latest = std::move(s);
  }
  m_cv.notify_all();
}

std::shared_ptr<const StatusServers::Snapshot> StatusServers::latest() const {
  std::lock_guard<std::mutex> l(m_mutex);
  return m_latest;
}

std::string StatusServers::metrics_text() const {
  std::ostringstream o;
  m_metrics.render(o);
  o << latest()->gauges;
  o << "# HELP keyline_station_page_events_total Server-sent events the line page's listener sent.\n"
       "# TYPE keyline_station_page_events_total counter\n"
    << "keyline_station_page_events_total " << m_events_sent.load() << "\n";
  o << "# HELP keyline_station_page_events_over_cap_total Events sent at once because too many waited.\n"
       "# TYPE keyline_station_page_events_over_cap_total counter\n"
    << "keyline_station_page_events_over_cap_total " << m_events_over_cap.load() << "\n";
  if (m_ops) m_ops_connections.render(o, m_ops->stats());
  if (m_page) m_page_connections.render(o, m_page->stats());
  return o.str();
}

http::Reply StatusServers::ops(const http::Request& request) const {
  if (!http::is_read(request)) return problem.method_not_allowed("GET, HEAD");
  if (request.path == "/metrics") return http::metrics_reply(metrics_text());
  if (request.path == "/healthz")
    return http::reply(200, "text/plain", "ok\n", {{"Cache-Control", "no-store"}});
  return problem(404, "not-found", "the operations listener serves /metrics and /healthz");
}

http::Reply StatusServers::page(const http::Request& request) {
  if (!http::is_read(request)) return problem.method_not_allowed("GET, HEAD");
  if (request.path == "/") return http::reply(200, "text/html; charset=utf-8", kStatusPage, kPageHeaders);
  if (request.path == "/events") return events(request);
  if (request.path == "/healthz")
    return http::reply(200, "text/plain", "ok\n", {{"Cache-Control", "no-store"}});
  return problem(404, "not-found", "the line page is / (events at /events)");
}

// One event: at once for a new page (no Last-Event-ID) or when devices ended since its id, else
// when one does or a second after the request came in.
http::Reply StatusServers::events(const http::Request& request) {
  std::uint64_t seen_seq = 0;
  std::int64_t seen_ended = 0;
  const bool known = parse_event_id(request.get("last-event-id"), seen_seq, seen_ended);
  int retry = kRetryMs;
  std::shared_ptr<const Snapshot> s;
  {
    std::unique_lock<std::mutex> l(m_mutex);
    if (known && m_waiting < kMaxWaiting && !m_final) {
      ++m_waiting;
      m_cv.wait_until(l, std::chrono::steady_clock::now() + std::chrono::seconds(1),
                      [&] { return m_stop || m_final || m_latest->ended != seen_ended; });
      --m_waiting;
    } else if (known && !m_final) {
      retry = kRetryOverCapMs;
      ++m_events_over_cap;
    }
    s = m_latest;
  }
  ++m_events_sent;
  std::string body = "retry: " + std::to_string(retry) + "\nid: " + std::to_string(s->seq) + "." +
                     std::to_string(s->ended) + "\ndata: " + s->json + "\n\n";
  return http::reply(200, "text/event-stream", std::move(body), {{"Cache-Control", "no-store"}});
}

}  // namespace keyline::station::line_detail
