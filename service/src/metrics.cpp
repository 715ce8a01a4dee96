#include "metrics.h"

#include <sstream>

namespace keyline::service {

void Metrics::observe(int status) {
  std::lock_guard<std::mutex> g(m_mutex);
  ++m_requests[status];
}

std::string Metrics::render(const core::http::ServerStats& stats, std::size_t live_sessions) const {
  std::ostringstream o;
  {
    std::lock_guard<std::mutex> g(m_mutex);
    o << "# HELP keyline_service_requests_total HTTP requests by status.\n"
         "# TYPE keyline_service_requests_total counter\n";
    for (const auto& [status, n] : m_requests)
      o << "keyline_service_requests_total{status=\"" << status << "\"} " << n << "\n";
  }
  o << "# HELP keyline_service_sessions_total Device sessions ended, by result.\n"
       "# TYPE keyline_service_sessions_total counter\n"
    << "keyline_service_sessions_total{result=\"ok\"} " << m_ok.load() << "\n"
    << "keyline_service_sessions_total{result=\"failed\"} " << m_failed.load() << "\n"
    << "# HELP keyline_service_live_sessions Sessions held in memory (open or ended within the TTL).\n"
       "# TYPE keyline_service_live_sessions gauge\n"
    << "keyline_service_live_sessions " << live_sessions << "\n";
  m_connections.render(o, stats);
  return o.str();
}

}  // namespace keyline::service
