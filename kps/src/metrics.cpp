#include "metrics.h"

#include <sstream>

namespace keyline::kps {

void Metrics::observe(int status) {
  std::lock_guard<std::mutex> g(m_mutex);
  ++m_requests[status];
}

std::string Metrics::render(const core::http::ServerStats& stats, int long_polls) const {
  std::ostringstream o;
  {
    std::lock_guard<std::mutex> g(m_mutex);
    o << "# HELP keyline_kps_requests_total HTTP requests by status.\n"
         "# TYPE keyline_kps_requests_total counter\n";
    for (const auto& [status, n] : m_requests)
      o << "keyline_kps_requests_total{status=\"" << status << "\"} " << n << "\n";
  }
  o << "# HELP keyline_kps_long_polls Notification long polls waiting now.\n"
       "# TYPE keyline_kps_long_polls gauge\n"
       "keyline_kps_long_polls " << long_polls << "\n"
       "# HELP keyline_kps_webhook_deliveries_total Webhook POSTs by result (retried: failed, tried again later).\n"
       "# TYPE keyline_kps_webhook_deliveries_total counter\n"
       "keyline_kps_webhook_deliveries_total{result=\"done\"} " << webhook_done << "\n"
       "keyline_kps_webhook_deliveries_total{result=\"retried\"} " << webhook_retried << "\n"
       "keyline_kps_webhook_deliveries_total{result=\"dead\"} " << webhook_dead << "\n"
       "# HELP keyline_kps_transfers_expired_total Transfers the purge expired.\n"
       "# TYPE keyline_kps_transfers_expired_total counter\n"
       "keyline_kps_transfers_expired_total " << expired << "\n";
  m_connections.render(o, stats);
  return o.str();
}

}  // namespace keyline::kps
