#include "metrics.h"

#include <sstream>

namespace keyline::kps {

void Metrics::observe(int status) {
  std::lock_guard<std::mutex> g(m_mutex);
  ++m_requests[status];
}

std::string Metrics::render(const core::http::ServerStats& stats) const {
  std::ostringstream o;
  {
    std::lock_guard<std::mutex> g(m_mutex);
    o << "# HELP keyline_kps_requests_total HTTP requests by status.\n"
         "# TYPE keyline_kps_requests_total counter\n";
    for (const auto& [status, n] : m_requests)
      o << "keyline_kps_requests_total{status=\"" << status << "\"} " << n << "\n";
  }
  m_connections.render(o, stats);
  return o.str();
}

}  // namespace keyline::kps
