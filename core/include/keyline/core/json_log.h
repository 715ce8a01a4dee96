// Every program's operational log: one JSON object per line (docs/operations.md, "Logs"), on stderr or
// appended to a file (--log FILE), so one parser reads the logs of every program. Each line has time
// (RFC 3339, UTC, milliseconds), level, program and event, then chip and imei when the line is about a
// device, then the event's own fields. Never a secret: fields are named values a caller chose, and no
// caller passes key bytes, PINs or passwords (tests/e2e/lib/secrets_scan.sh checks the logs for them).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "keyline/core/log_sink.h"

namespace keyline::core::log {

enum class Level { Debug, Info, Warn, Error };

const char* to_string(Level level);

// The named values of one line, kept in the order they were added; each value already JSON-encoded.
class Fields {
 public:
  Fields& str(std::string_view key, std::string_view value);
  Fields& num(std::string_view key, std::int64_t value);
  Fields& real(std::string_view key, double value);
  Fields& flag(std::string_view key, bool value);
  const std::vector<std::pair<std::string, std::string>>& items() const { return m_items; }

 private:
  std::vector<std::pair<std::string, std::string>> m_items;
};

// "2026-12-01T10:00:00.123Z"
std::string rfc3339_ms(std::chrono::system_clock::time_point t);

// One line, without its newline. chip and imei are left out when empty.
std::string format_line(std::chrono::system_clock::time_point t, Level level, std::string_view program,
                        std::string_view event, std::string_view chip, std::string_view imei, const Fields& fields);

class JsonLog {
 public:
  // where: "stderr" (or empty), "off", or a file opened for appending (ConfigError when it cannot be).
  JsonLog(std::string program, const std::string& where);

  void write(Level level, std::string_view event, const Fields& fields = {});
  void device(Level level, std::string_view event, std::string_view chip, std::string_view imei,
              const Fields& fields = {});

 private:
  std::string m_program;
  LogSink m_sink;
};

// The process's program name for every JSON line it writes (the servers' request and connection-layer
// lines too): set by core::run_guarded from the name each main passes it; "keyline" before.
void set_program(const std::string& program);
std::string program();

// The process's log for programs whose main opens one: open() once in main (a second call replaces it),
// then info()/warn()/error() anywhere; before open() lines go to stderr under the program name "keyline".
void open(const std::string& program, const std::string& where = "stderr");
JsonLog& get();
inline void info(std::string_view event, const Fields& f = {}) { get().write(Level::Info, event, f); }
inline void warn(std::string_view event, const Fields& f = {}) { get().write(Level::Warn, event, f); }
inline void error(std::string_view event, const Fields& f = {}) { get().write(Level::Error, event, f); }

}  // namespace keyline::core::log
