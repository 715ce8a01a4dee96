#include "metrics.h"

#include <cstdio>
#include <sstream>

namespace keyline::backupdb {

std::size_t Metrics::route_index(const std::string& route) {
  for (std::size_t i = 0; i + 1 < kRoutes.size(); ++i)
    if (route == kRoutes[i]) return i;
  return kRoutes.size() - 1;
}

std::size_t Metrics::status_index(int status) {
  for (std::size_t i = 0; i < kStatuses.size(); ++i)
    if (kStatuses[i] == status) return i;
  return kStatuses.size();  // "other"
}

void Metrics::observe(const std::string& route, int status, double seconds) {
  ++m_requests[route_index(route)][status_index(status)];
  std::size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  ++m_buckets[i];
  ++m_count;
  m_sum_us += static_cast<unsigned long long>(seconds * 1e6);
}

std::string Metrics::render(std::size_t cache_hits, std::size_t cache_misses,
                            const core::http::ServerStats& stats) const {
  std::ostringstream o;
  o << "# HELP keyline_backupdb_requests_total HTTP requests by route and status.\n"
       "# TYPE keyline_backupdb_requests_total counter\n";
  for (std::size_t r = 0; r < kRoutes.size(); ++r) {
    for (std::size_t s = 0; s <= kStatuses.size(); ++s) {
      const auto n = m_requests[r][s].load();
      if (n == 0) continue;
      const std::string status = s < kStatuses.size() ? std::to_string(kStatuses[s]) : "other";
      o << "keyline_backupdb_requests_total{route=\"" << kRoutes[r] << "\",status=\"" << status << "\"} " << n << "\n";
    }
  }
  o << "# HELP keyline_backupdb_request_duration_seconds Time from request parsed to response sent.\n"
       "# TYPE keyline_backupdb_request_duration_seconds histogram\n";
  unsigned long long cumulative = 0;
  for (std::size_t i = 0; i < kBounds.size(); ++i) {
    cumulative += m_buckets[i].load();
    char le[32];
    std::snprintf(le, sizeof le, "%g", kBounds[i]);
    o << "keyline_backupdb_request_duration_seconds_bucket{le=\"" << le << "\"} " << cumulative << "\n";
  }
  cumulative += m_buckets[kBounds.size()].load();
  o << "keyline_backupdb_request_duration_seconds_bucket{le=\"+Inf\"} " << cumulative << "\n";
  char sum[32];
  std::snprintf(sum, sizeof sum, "%.6f", static_cast<double>(m_sum_us.load()) / 1e6);
  o << "keyline_backupdb_request_duration_seconds_sum " << sum << "\n";
  o << "keyline_backupdb_request_duration_seconds_count " << m_count.load() << "\n";
  o << "# HELP keyline_backupdb_records_published_total Records added by this process.\n"
       "# TYPE keyline_backupdb_records_published_total counter\n"
    << "keyline_backupdb_records_published_total " << m_published.load() << "\n";
  o << "# HELP keyline_backupdb_cache_hits_total Reads answered from the in-process cache.\n"
       "# TYPE keyline_backupdb_cache_hits_total counter\n"
    << "keyline_backupdb_cache_hits_total " << cache_hits << "\n";
  o << "# HELP keyline_backupdb_cache_misses_total Reads that went to PostgreSQL.\n"
       "# TYPE keyline_backupdb_cache_misses_total counter\n"
    << "keyline_backupdb_cache_misses_total " << cache_misses << "\n";
  m_connections.render(o, stats);
  return o.str();
}

}  // namespace keyline::backupdb
