// Prometheus text exposition (format 0.0.4) of the server's counters and latency histogram, and of
// what the connection layer did on its own (core::http::Event): refusals, deadlines, malformed
// requests by the status sent.
#pragma once

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <utility>

#include "keyline/core/connection_metrics.h"
#include "keyline/core/http_server.h"

namespace keyline::backupdb {

// What /metrics says about the transparency log besides the counters.
struct LogStatus {
  bool enabled = false;
  bool integrator = false;     // this process holds the integrator lock
  std::int64_t signed_at = 0;  // Unix seconds of the newest checkpoint (0: none)
};

class Metrics {
 public:
  void observe(const std::string& route, int status, double seconds);
  void observe_event(const core::http::Event& event) { m_connections.observe(event); }
  void record_published() { ++m_published; }
  // The transparency log: `n` entries in a new checkpoint, `latency` seconds after the first of them
  // was published by this process (negative when none was).
  void log_integrated(std::size_t n, double latency);
  void log_checkpoint(std::uint64_t size);  // the newest checkpoint this process signed or read
  // serve --witness: a cosignature stored, or a push that got none (down, refused, bad answer).
  void log_witness_cosigned() { ++m_log_witness_cosigned; }
  void log_witness_failed() { ++m_log_witness_failed; }
  std::string render(std::size_t cache_hits, std::size_t cache_misses, const core::http::ServerStats& stats,
                     const LogStatus& log = LogStatus{}) const;

 private:
  // Bucket bounds in seconds: sub-millisecond resolution where a cached read lands, up to 5 s.
  static constexpr std::array<double, 12> kBounds = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                      0.01,   0.025,   0.05,   0.1,   0.5,    5.0};
  // Fixed label sets, so counting is a lock-free atomic increment on the hot path.
  static constexpr std::array<const char*, 15> kRoutes = {
      "record", "record_backup", "record_certificate", "imei", "publish", "ca", "healthz", "metrics",
      "log_checkpoint", "log_tile", "log_entries", "record_proof", "log_consistency", "other", "unknown"};
  static constexpr std::array<int, 19> kStatuses = {200, 201, 304, 400, 401, 403, 404, 405, 408, 409,
                                                    411, 413, 415, 422, 429, 431, 500, 501, 503};
  static std::size_t route_index(const std::string& route);
  static std::size_t status_index(int status);
  std::array<std::array<std::atomic<unsigned long long>, kStatuses.size() + 1>, kRoutes.size()> m_requests{};
  std::array<std::atomic<unsigned long long>, kBounds.size() + 1> m_buckets{};
  std::atomic<unsigned long long> m_count{0};
  std::atomic<unsigned long long> m_sum_us{0};
  std::atomic<unsigned long long> m_published{0};
  void render_log(std::ostringstream& o, const LogStatus& log) const;
  static constexpr std::array<double, 9> kLogBounds = {0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0};
  std::array<std::atomic<unsigned long long>, kLogBounds.size() + 1> m_log_buckets{};
  std::atomic<unsigned long long> m_log_latency_count{0};
  std::atomic<unsigned long long> m_log_latency_sum_us{0};
  std::atomic<unsigned long long> m_log_integrated{0};
  std::atomic<unsigned long long> m_log_checkpoints{0};
  std::atomic<unsigned long long> m_log_size{0};
  std::atomic<unsigned long long> m_log_witness_cosigned{0};
  std::atomic<unsigned long long> m_log_witness_failed{0};
  core::http::ConnectionMetrics m_connections{"keyline_backupdb"};
};

}  // namespace keyline::backupdb
