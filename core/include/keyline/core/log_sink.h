// Where a server's request log goes: "stderr" (or empty), "off", or a file opened for appending.
// One line per call, written whole under a lock and flushed, so concurrent handlers never interleave.
#pragma once

#include <cstdio>
#include <mutex>
#include <string>

namespace keyline::core {

class LogSink {
 public:
  // Throws ConfigError when the file cannot be opened.
  explicit LogSink(const std::string& where);
  ~LogSink();
  LogSink(const LogSink&) = delete;
  LogSink& operator=(const LogSink&) = delete;

  void line(const std::string& s);

 private:
  std::FILE* m_file = nullptr;
  bool m_owned = false;
  std::mutex m_mutex;
};

}  // namespace keyline::core
