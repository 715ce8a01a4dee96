#include "metrics.h"

#include <sstream>

namespace keyline::kps {

void Metrics::observe(int status) {
  std::lock_guard<std::mutex> g(m_mutex);
  ++m_requests[status];
}

void Metrics::observe_event(const core::http::Event& event) {
  const auto kind = static_cast<std::size_t>(event.kind);
  if (kind < m_events.size()) ++m_events[kind];
  if (event.kind != core::http::Event::Kind::Malformed) return;
  std::lock_guard<std::mutex> g(m_mutex);
  ++m_malformed[event.status];
}

std::string Metrics::render(const core::http::ServerStats& stats) const {
  std::ostringstream o;
  {
    std::lock_guard<std::mutex> g(m_mutex);
    o << "# HELP keyline_kps_requests_total HTTP requests by status.\n"
         "# TYPE keyline_kps_requests_total counter\n";
    for (const auto& [status, n] : m_requests)
      o << "keyline_kps_requests_total{status=\"" << status << "\"} " << n << "\n";
    o << "# HELP keyline_kps_malformed_requests_total Requests answered with a problem document by the "
         "connection layer, by status.\n"
         "# TYPE keyline_kps_malformed_requests_total counter\n";
    for (const auto& [status, n] : m_malformed)
      o << "keyline_kps_malformed_requests_total{status=\"" << status << "\"} " << n << "\n";
  }
  o << "# HELP keyline_kps_connection_events_total What the connection layer did without a handler.\n"
       "# TYPE keyline_kps_connection_events_total counter\n";
  for (std::size_t k = 0; k < m_events.size(); ++k)
    o << "keyline_kps_connection_events_total{event=\""
      << core::http::to_string(static_cast<core::http::Event::Kind>(k)) << "\"} " << m_events[k].load() << "\n";
  o << "# HELP keyline_kps_open_connections Connections open on the public listener.\n"
       "# TYPE keyline_kps_open_connections gauge\n"
    << "keyline_kps_open_connections " << stats.open_connections << "\n"
    << "# HELP keyline_kps_connections_accepted_total Connections accepted on the public listener.\n"
       "# TYPE keyline_kps_connections_accepted_total counter\n"
    << "keyline_kps_connections_accepted_total " << stats.accepted << "\n"
    << "# HELP keyline_kps_connections_refused_total Connections or requests refused over a cap.\n"
       "# TYPE keyline_kps_connections_refused_total counter\n"
    << "keyline_kps_connections_refused_total " << stats.refused << "\n"
    << "# HELP keyline_kps_connections_timed_out_total Connections cut at a deadline.\n"
       "# TYPE keyline_kps_connections_timed_out_total counter\n"
    << "keyline_kps_connections_timed_out_total " << stats.timed_out << "\n"
    << "# HELP keyline_kps_accept_paused_total Times accepting paused at the descriptor limit.\n"
       "# TYPE keyline_kps_accept_paused_total counter\n"
    << "keyline_kps_accept_paused_total " << stats.accept_paused << "\n";
  return o.str();
}

}  // namespace keyline::kps
