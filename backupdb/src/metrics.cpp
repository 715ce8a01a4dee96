#include "metrics.h"

#include <algorithm>

#include <cstdio>
#include <ctime>
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

void Metrics::log_integrated(std::size_t n, double latency) {
  m_log_integrated += n;
  ++m_log_checkpoints;
  if (latency < 0) return;
  std::size_t i = 0;
  while (i < kLogBounds.size() && latency > kLogBounds[i]) ++i;
  ++m_log_buckets[i];
  ++m_log_latency_count;
  m_log_latency_sum_us += static_cast<unsigned long long>(latency * 1e6);
}

void Metrics::log_checkpoint(std::uint64_t size) {
  auto cur = m_log_size.load();
  while (size > cur && !m_log_size.compare_exchange_weak(cur, size)) {
  }
}

void Metrics::render_log(std::ostringstream& o, const LogStatus& log) const {
  if (!log.enabled) return;
  o << "# HELP keyline_backupdb_log_integrator 1 while this process holds the integrator lock.\n"
       "# TYPE keyline_backupdb_log_integrator gauge\n"
    << "keyline_backupdb_log_integrator " << (log.integrator ? 1 : 0) << "\n";
  o << "# HELP keyline_backupdb_log_entries_integrated_total Log entries this process put into checkpoints.\n"
       "# TYPE keyline_backupdb_log_entries_integrated_total counter\n"
    << "keyline_backupdb_log_entries_integrated_total " << m_log_integrated.load() << "\n";
  o << "# HELP keyline_backupdb_log_checkpoints_total Checkpoints this process signed with new entries.\n"
       "# TYPE keyline_backupdb_log_checkpoints_total counter\n"
    << "keyline_backupdb_log_checkpoints_total " << m_log_checkpoints.load() << "\n";
  o << "# HELP keyline_backupdb_log_checkpoint_size Tree size of the newest checkpoint seen.\n"
       "# TYPE keyline_backupdb_log_checkpoint_size gauge\n"
    << "keyline_backupdb_log_checkpoint_size " << m_log_size.load() << "\n";
  o << "# HELP keyline_backupdb_log_witness_cosignatures_total Witness cosignatures stored (serve --witness).\n"
       "# TYPE keyline_backupdb_log_witness_cosignatures_total counter\n"
    << "keyline_backupdb_log_witness_cosignatures_total " << m_log_witness_cosigned.load() << "\n";
  o << "# HELP keyline_backupdb_log_witness_failures_total Pushes to a witness that got no cosignature.\n"
       "# TYPE keyline_backupdb_log_witness_failures_total counter\n"
    << "keyline_backupdb_log_witness_failures_total " << m_log_witness_failed.load() << "\n";
  const auto now = static_cast<long long>(std::time(nullptr));
  o << "# HELP keyline_backupdb_log_checkpoint_age_seconds Seconds since the newest checkpoint was signed.\n"
       "# TYPE keyline_backupdb_log_checkpoint_age_seconds gauge\n"
    << "keyline_backupdb_log_checkpoint_age_seconds "
    << (log.signed_at > 0 ? std::max(0LL, now - static_cast<long long>(log.signed_at)) : -1) << "\n";
  o << "# HELP keyline_backupdb_log_integration_latency_seconds First publish of a batch to its checkpoint stored.\n"
       "# TYPE keyline_backupdb_log_integration_latency_seconds histogram\n";
  unsigned long long cumulative = 0;
  for (std::size_t i = 0; i < kLogBounds.size(); ++i) {
    cumulative += m_log_buckets[i].load();
    char le[32];
    std::snprintf(le, sizeof le, "%g", kLogBounds[i]);
    o << "keyline_backupdb_log_integration_latency_seconds_bucket{le=\"" << le << "\"} " << cumulative << "\n";
  }
  cumulative += m_log_buckets[kLogBounds.size()].load();
  o << "keyline_backupdb_log_integration_latency_seconds_bucket{le=\"+Inf\"} " << cumulative << "\n";
  char sum[32];
  std::snprintf(sum, sizeof sum, "%.6f", static_cast<double>(m_log_latency_sum_us.load()) / 1e6);
  o << "keyline_backupdb_log_integration_latency_seconds_sum " << sum << "\n";
  o << "keyline_backupdb_log_integration_latency_seconds_count " << m_log_latency_count.load() << "\n";
}

std::string Metrics::render(std::size_t cache_hits, std::size_t cache_misses,
                            const core::http::ServerStats& stats, const LogStatus& log) const {
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
  render_log(o, log);
  m_connections.render(o, stats);
  return o.str();
}

}  // namespace keyline::backupdb
