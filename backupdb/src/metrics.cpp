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

void Metrics::observe_event(const core::http::Event& event) {
  const auto kind = static_cast<std::size_t>(event.kind);
  if (kind < m_events.size()) ++m_events[kind];
  if (event.kind == core::http::Event::Kind::Malformed) ++m_malformed[status_index(event.status)];
}

void Metrics::render_events(std::ostream& o, const core::http::ServerStats& stats) const {
  using Kind = core::http::Event::Kind;
  o << "# HELP keyline_backupdb_connection_events_total What the connection layer did without a handler.\n"
       "# TYPE keyline_backupdb_connection_events_total counter\n";
  for (std::size_t k = 0; k < m_events.size(); ++k)
    o << "keyline_backupdb_connection_events_total{event=\"" << core::http::to_string(static_cast<Kind>(k))
      << "\"} " << m_events[k].load() << "\n";
  o << "# HELP keyline_backupdb_malformed_requests_total Requests answered with a problem document by the "
       "connection layer, by status.\n"
       "# TYPE keyline_backupdb_malformed_requests_total counter\n";
  for (std::size_t s = 0; s <= kStatuses.size(); ++s) {
    const auto n = m_malformed[s].load();
    if (n == 0) continue;
    const std::string status = s < kStatuses.size() ? std::to_string(kStatuses[s]) : "other";
    o << "keyline_backupdb_malformed_requests_total{status=\"" << status << "\"} " << n << "\n";
  }
  o << "# HELP keyline_backupdb_open_connections Connections open on the public listener.\n"
       "# TYPE keyline_backupdb_open_connections gauge\n"
    << "keyline_backupdb_open_connections " << stats.open_connections << "\n"
    << "# HELP keyline_backupdb_queued_requests Complete requests waiting for a worker.\n"
       "# TYPE keyline_backupdb_queued_requests gauge\n"
    << "keyline_backupdb_queued_requests " << stats.queued_requests << "\n"
    << "# HELP keyline_backupdb_connections_accepted_total Connections accepted on the public listener.\n"
       "# TYPE keyline_backupdb_connections_accepted_total counter\n"
    << "keyline_backupdb_connections_accepted_total " << stats.accepted << "\n"
    << "# HELP keyline_backupdb_connections_refused_total Connections or requests refused over a cap.\n"
       "# TYPE keyline_backupdb_connections_refused_total counter\n"
    << "keyline_backupdb_connections_refused_total " << stats.refused << "\n"
    << "# HELP keyline_backupdb_connections_timed_out_total Connections cut at a deadline.\n"
       "# TYPE keyline_backupdb_connections_timed_out_total counter\n"
    << "keyline_backupdb_connections_timed_out_total " << stats.timed_out << "\n"
    << "# HELP keyline_backupdb_accept_paused_total Times accepting paused at the descriptor limit.\n"
       "# TYPE keyline_backupdb_accept_paused_total counter\n"
    << "keyline_backupdb_accept_paused_total " << stats.accept_paused << "\n";
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
  render_events(o, stats);
  return o.str();
}

}  // namespace keyline::backupdb
