#include "keyline/core/event_log.h"

#include <ctime>
#include <sstream>

#include "keyline/core/http.h"

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
  const std::string ts = utc_timestamp();
  if (dropped > 0)
    m_sink.line("{\"ts\":\"" + ts + "\",\"listener\":\"" + json_escape(listener) +
                "\",\"event\":\"suppressed\",\"count\":" + std::to_string(dropped) + "}");
  std::ostringstream line;
  line << "{\"ts\":\"" << ts << "\",\"listener\":\"" << json_escape(listener) << "\",\"event\":\""
       << to_string(event.kind) << "\",\"peer\":\"" << json_escape(event.peer) << "\",\"status\":" << event.status;
  if (!event.detail.empty()) line << ",\"detail\":\"" << json_escape(event.detail) << "\"";
  line << "}";
  m_sink.line(line.str());
}

std::uint64_t EventLog::suppressed_total() const {
  std::lock_guard<std::mutex> g(m_mutex);
  return m_suppressed_total;
}

}  // namespace keyline::core::http
