// Prometheus text exposition (format 0.0.4) of the server's counters and latency histogram, and of
// what the connection layer did on its own (core::http::Event): refusals, deadlines, malformed
// requests by the status sent.
#pragma once

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "keyline/core/connection_metrics.h"
#include "keyline/core/http_server.h"

namespace keyline::backupdb {

class Metrics {
 public:
  void observe(const std::string& route, int status, double seconds);
  void observe_event(const core::http::Event& event) { m_connections.observe(event); }
  void record_published() { ++m_published; }
  std::string render(std::size_t cache_hits, std::size_t cache_misses, const core::http::ServerStats& stats) const;

 private:
  // Bucket bounds in seconds: sub-millisecond resolution where a cached read lands, up to 5 s.
  static constexpr std::array<double, 12> kBounds = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                      0.01,   0.025,   0.05,   0.1,   0.5,    5.0};
  // Fixed label sets, so counting is a lock-free atomic increment on the hot path.
  static constexpr std::array<const char*, 10> kRoutes = {"record", "record_backup", "record_certificate", "imei",
                                                          "publish", "ca", "healthz", "metrics", "other", "unknown"};
  static constexpr std::array<int, 19> kStatuses = {200, 201, 304, 400, 401, 403, 404, 405, 408, 409,
                                                    411, 413, 415, 422, 429, 431, 500, 501, 503};
  static std::size_t route_index(const std::string& route);
  static std::size_t status_index(int status);
  std::array<std::array<std::atomic<unsigned long long>, kStatuses.size() + 1>, kRoutes.size()> m_requests{};
  std::array<std::atomic<unsigned long long>, kBounds.size() + 1> m_buckets{};
  std::atomic<unsigned long long> m_count{0};
  std::atomic<unsigned long long> m_sum_us{0};
  std::atomic<unsigned long long> m_published{0};
  core::http::ConnectionMetrics m_connections{"keyline_backupdb"};
};

}  // namespace keyline::backupdb
