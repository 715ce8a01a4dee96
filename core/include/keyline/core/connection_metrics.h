// The Prometheus text (format 0.0.4) of what a server's connection layer did on its own
// (core::http::Event: refusals, deadlines, malformed requests by the status sent) and of its live
// counts (ServerStats). The public DB and the KPS both expose it, each under its own metric prefix.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <ostream>
#include <string>

#include "keyline/core/http_server.h"

namespace keyline::core::http {

class ConnectionMetrics {
 public:
  explicit ConnectionMetrics(std::string prefix) : m_prefix(std::move(prefix)) {}  // "keyline_backupdb"

  void observe(const Event& event);  // thread-safe
  void render(std::ostream& out, const ServerStats& stats) const;

 private:
  const std::string m_prefix;
  std::array<std::atomic<std::uint64_t>, Event::kKinds> m_events{};
  mutable std::mutex m_mutex;                // malformed requests are rare; a short lock each
  std::map<int, std::uint64_t> m_malformed;  // by status sent
};

}  // namespace keyline::core::http
