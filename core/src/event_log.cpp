#include "keyline/core/event_log.h"

#include <ctime>
#include <sstream>

#include "keyline/core/http.h"
#include "keyline/core/json_log.h"

namespace keyline::core::http {

std::string utc_timestamp() {
  char ts[32];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return ts;
}

void EventLog::write(const Event& event, const char* listener) {
  std::uint64_t dropped = 0;
  {
    std::lock_guard<std::mutex> g(m_mutex);
    const auto now = std::chrono::steady_clock::now();
    if (now - m_window >= std::chrono::seconds(1)) {
      m_window = now;
      m_used = 0;
      dropped = m_suppressed_window;
      m_suppressed_window = 0;
    }
    if (m_used >= m_budget) {
      ++m_suppressed_window;
      ++m_suppressed_total;
      return;
    }
    ++m_used;
  }
  // The common line of every program (core/json_log.h): time, level, program, event, then the fields.
  const auto now = std::chrono::system_clock::now();
  const std::string program = log::program();
  if (dropped > 0)
    m_sink.line(log::format_line(now, log::Level::Warn, program, "suppressed", "", "",
                                 log::Fields().num("count", static_cast<std::int64_t>(dropped)).str("listener", listener)));
  log::Fields f;
  f.str("listener", listener).str("peer", event.peer).num("status", event.status);
  if (!event.detail.empty()) f.str("detail", event.detail);
  m_sink.line(log::format_line(now, log::Level::Warn, program, to_string(event.kind), "", "", f));
}

std::uint64_t EventLog::suppressed_total() const {
  std::lock_guard<std::mutex> g(m_mutex);
  return m_suppressed_total;
}

}  // namespace keyline::core::http
