// Prometheus text exposition (format 0.0.4) of keyline-service: requests by status, sessions by end,
// and the connection layer's own events.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "keyline/core/connection_metrics.h"
#include "keyline/core/http_server.h"

namespace keyline::service {

class Metrics {
 public:
  void observe(int status);
  void session_end(bool ok) { ++(ok ? m_ok : m_failed); }
  void observe_event(const core::http::Event& event) { m_connections.observe(event); }
  std::string render(const core::http::ServerStats& stats, std::size_t live_sessions) const;

 private:
  mutable std::mutex m_mutex;
  std::map<int, std::uint64_t> m_requests;
  std::atomic<std::uint64_t> m_ok{0}, m_failed{0};
  core::http::ConnectionMetrics m_connections{"keyline_service"};
};

}  // namespace keyline::service
