// The log lines of what a server's connection layer did on its own (core::http::Event: refusals,
// deadlines, malformed requests). Every event is counted in the metrics by the part, but an attacker
// who opens thousands of connections a second would otherwise write thousands of log lines a second
// and fill the disk: lines beyond a budget per second are dropped and their number is written once,
// as a "suppressed" line, when the next second opens.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

#include "keyline/core/http_server.h"
#include "keyline/core/log_sink.h"

namespace keyline::core::http {

class EventLog {
 public:
  EventLog(LogSink& sink, std::uint32_t lines_per_second = 20) : m_sink(sink), m_budget(lines_per_second) {}

  // One JSON line for the event, or nothing when this second's budget is spent. Thread-safe.
  void write(const Event& event, const char* listener);

  std::uint64_t suppressed_total() const;

 private:
  LogSink& m_sink;
  const std::uint32_t m_budget;
  mutable std::mutex m_mutex;
  std::chrono::steady_clock::time_point m_window{};
  std::uint32_t m_used = 0;
  std::uint64_t m_suppressed_window = 0;
  std::uint64_t m_suppressed_total = 0;
};

// "2026-12-01T10:00:00Z"
std::string utc_timestamp();

}  // namespace keyline::core::http
