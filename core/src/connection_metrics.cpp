#include "keyline/core/connection_metrics.h"

namespace keyline::core::http {

void ConnectionMetrics::observe(const Event& event) {
  const auto kind = static_cast<std::size_t>(event.kind);
  if (kind < m_events.size()) ++m_events[kind];
  if (event.kind != Event::Kind::Malformed) return;
  std::lock_guard<std::mutex> g(m_mutex);
  ++m_malformed[event.status];
}

void ConnectionMetrics::render(std::ostream& o, const ServerStats& stats) const {
  const std::string& p = m_prefix;
  o << "# HELP " << p << "_connection_events_total What the connection layer did without a handler.\n"
    << "# TYPE " << p << "_connection_events_total counter\n";
  for (std::size_t k = 0; k < m_events.size(); ++k)
    o << p << "_connection_events_total{event=\"" << to_string(static_cast<Event::Kind>(k)) << "\"} "
      << m_events[k].load() << "\n";
  o << "# HELP " << p << "_malformed_requests_total Requests answered with a problem document by the "
    << "connection layer, by status.\n"
    << "# TYPE " << p << "_malformed_requests_total counter\n";
  {
    std::lock_guard<std::mutex> g(m_mutex);
    for (const auto& [status, n] : m_malformed)
      o << p << "_malformed_requests_total{status=\"" << status << "\"} " << n << "\n";
  }
  const auto one = [&](const char* name, const char* type, const char* help, std::uint64_t value) {
    o << "# HELP " << p << "_" << name << " " << help << "\n"
      << "# TYPE " << p << "_" << name << " " << type << "\n"
      << p << "_" << name << " " << value << "\n";
  };
  one("open_connections", "gauge", "Connections open on the public listener.", stats.open_connections);
  one("queued_requests", "gauge", "Complete requests waiting for a worker.", stats.queued_requests);
  one("buffered_bytes", "gauge", "Request and reply bytes the connection layer holds now.", stats.buffered_bytes);
  one("connections_accepted_total", "counter", "Connections accepted on the public listener.", stats.accepted);
  one("connections_refused_total", "counter", "Connections or requests refused over a cap.", stats.refused);
  one("connections_timed_out_total", "counter", "Connections cut at a deadline.", stats.timed_out);
  one("accept_paused_total", "counter", "Times accepting paused at the descriptor limit.", stats.accept_paused);
}

}  // namespace keyline::core::http
