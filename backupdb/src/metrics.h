// Prometheus text exposition (format 0.0.4) of the server's counters and latency histogram.
#pragma once

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace keyline::backupdb {

class Metrics {
 public:
  void observe(const std::string& route, int status, double seconds);
  void record_published() { ++m_published; }
  std::string render(std::size_t cache_hits, std::size_t cache_misses) const;

 private:
  // Bucket bounds in seconds: sub-millisecond resolution where a cached read lands, up to 5 s.
  static constexpr std::array<double, 12> kBounds = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                      0.01,   0.025,   0.05,   0.1,   0.5,    5.0};
  mutable std::mutex m_mutex;
  std::map<std::pair<std::string, int>, unsigned long long> m_requests;
  std::array<std::atomic<unsigned long long>, kBounds.size() + 1> m_buckets{};
  std::atomic<unsigned long long> m_count{0};
  std::atomic<unsigned long long> m_sum_us{0};
  std::atomic<unsigned long long> m_published{0};
};

}  // namespace keyline::backupdb
