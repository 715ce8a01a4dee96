#include "keyline/core/json_log.h"

#include <cmath>
#include <ctime>
#include <mutex>

#include "keyline/core/http.h"

namespace keyline::core::log {

const char* to_string(Level level) {
  switch (level) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Warn: return "warn";
    case Level::Error: return "error";
  }
  return "info";
}

Fields& Fields::str(std::string_view key, std::string_view value) {
  m_items.emplace_back(std::string(key), "\"" + http::json_escape(std::string(value)) + "\"");
  return *this;
}

Fields& Fields::num(std::string_view key, std::int64_t value) {
  m_items.emplace_back(std::string(key), std::to_string(value));
  return *this;
}

Fields& Fields::real(std::string_view key, double value) {
  // JSON (RFC 8259 section 6) has no NaN or infinity.
  if (!std::isfinite(value)) {
    m_items.emplace_back(std::string(key), "null");
    return *this;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", value);
  m_items.emplace_back(std::string(key), buf);
  return *this;
}

Fields& Fields::flag(std::string_view key, bool value) {
  m_items.emplace_back(std::string(key), value ? "true" : "false");
  return *this;
}

std::string rfc3339_ms(std::chrono::system_clock::time_point t) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(ms % 1000));
  return buf;
}

std::string format_line(std::chrono::system_clock::time_point t, Level level, std::string_view program,
                        std::string_view event, std::string_view chip, std::string_view imei, const Fields& fields) {
  std::string out = "{\"time\":\"" + rfc3339_ms(t) + "\",\"level\":\"" + to_string(level) + "\",\"program\":\"" +
                    http::json_escape(std::string(program)) + "\",\"event\":\"" +
                    http::json_escape(std::string(event)) + "\"";
  if (!chip.empty()) out += ",\"chip\":\"" + http::json_escape(std::string(chip)) + "\"";
  if (!imei.empty()) out += ",\"imei\":\"" + http::json_escape(std::string(imei)) + "\"";
  for (const auto& [k, v] : fields.items()) out += ",\"" + http::json_escape(k) + "\":" + v;
  return out + "}";
}

JsonLog::JsonLog(std::string program, const std::string& where) : m_program(std::move(program)), m_sink(where) {}

void JsonLog::write(Level level, std::string_view event, const Fields& fields) {
  device(level, event, {}, {}, fields);
}

void JsonLog::device(Level level, std::string_view event, std::string_view chip, std::string_view imei,
                     const Fields& fields) {
  m_sink.line(format_line(std::chrono::system_clock::now(), level, m_program, event, chip, imei, fields));
}

namespace {

std::mutex g_mutex;
std::unique_ptr<JsonLog> g_log;
std::string g_program = "keyline";

}  // namespace

void set_program(const std::string& name) {
  std::lock_guard<std::mutex> g(g_mutex);
  g_program = name;
}

std::string program() {
  std::lock_guard<std::mutex> g(g_mutex);
  return g_program;
}

void open(const std::string& name, const std::string& where) {
  auto log = std::make_unique<JsonLog>(name, where);
  std::lock_guard<std::mutex> g(g_mutex);
  g_log = std::move(log);
  g_program = name;
}

JsonLog& get() {
  std::lock_guard<std::mutex> g(g_mutex);
  if (!g_log) g_log = std::make_unique<JsonLog>(g_program, "stderr");
  return *g_log;
}

}  // namespace keyline::core::log
