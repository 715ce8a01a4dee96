// Prometheus text exposition (format 0.0.4) of the KPS: requests by status, and what the connection
// layer did on its own (core::http::Event): refusals, deadlines, malformed requests by status; the
// long polls held, webhook deliveries by result and the transfers the purge expired.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "keyline/core/connection_metrics.h"
#include "keyline/core/http_server.h"

namespace keyline::kps {

class Metrics {
 public:
  void observe(int status);
  void observe_event(const core::http::Event& event) { m_connections.observe(event); }
  std::string render(const core::http::ServerStats& stats, int long_polls) const;

  std::atomic<std::uint64_t> webhook_done{0}, webhook_retried{0}, webhook_dead{0}, expired{0};

 private:
  mutable std::mutex m_mutex;                    // statuses are few; a request costs one short lock
  std::map<int, std::uint64_t> m_requests;       // by status
  core::http::ConnectionMetrics m_connections{"keyline_kps"};
};

}  // namespace keyline::kps
