#include "keyline/core/log_sink.h"

#include "keyline/core/error.h"

namespace keyline::core {

LogSink::LogSink(const std::string& where) {
  if (where == "off") return;
  if (where.empty() || where == "stderr") {
    m_file = stderr;
    return;
  }
  m_file = std::fopen(where.c_str(), "a");
  if (!m_file) throw ConfigError(ErrorCode::Config, "cannot open log file " + where);
  m_owned = true;
}

LogSink::~LogSink() {
  if (m_owned) std::fclose(m_file);
}

void LogSink::line(const std::string& s) {
  if (!m_file) return;
  std::lock_guard<std::mutex> g(m_mutex);
  std::fputs(s.c_str(), m_file);
  std::fputc('\n', m_file);
  std::fflush(m_file);
}

}  // namespace keyline::core
