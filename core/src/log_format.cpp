#include "keyline/core/log_format.h"

#include <atomic>
#include <cctype>
#include <cstdio>
#include <iostream>
#include <streambuf>

#include "keyline/core/cplc.h"
#include "keyline/core/json_log.h"

namespace keyline::core::log {

namespace {

std::atomic<Format> g_format{Format::Text};

// "keyline-station: " off the front: the JSON line has it as program.
std::string_view strip_program(std::string_view t) {
  const auto colon = t.find(": ");
  if (t.substr(0, 8) == "keyline-" && colon != std::string_view::npos && t.substr(0, colon).find(' ') == std::string_view::npos)
    return t.substr(colon + 2);
  return t;
}

// "error 1402: ..." -> 1402; "error: ..." -> 0; else -1.
long error_code_at(std::string_view t) {
  if (t.substr(0, 7) == "error: ") return 0;
  if (t.substr(0, 6) != "error ") return -1;
  std::size_t i = 6;
  long code = 0;
  while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) code = code * 10 + (t[i++] - '0');
  return i > 6 && t.substr(i, 2) == ": " ? code : -1;
}

// "chip 4B4C000184AD1AC7C05C": the line is about that chip.
std::string chip_in(std::string_view m) {
  const auto at = m.find("chip ");
  if (at == std::string_view::npos || m.size() < at + 5 + 20) return "";
  const std::string chip(m.substr(at + 5, 20));
  return ChipId::is_valid(chip) ? chip : "";
}

std::string imei_in(std::string_view m) {
  const auto at = m.find("IMEI ");
  if (at == std::string_view::npos || m.size() < at + 5 + 15) return "";
  const std::string imei(m.substr(at + 5, 15));
  return imei.find_first_not_of("0123456789") == std::string::npos ? imei : "";
}

// std::cerr in json: each thread's text is held until its newline, then said as one line, so lines
// from the station's workers never interleave.
class LineBuf : public std::streambuf {
 protected:
  int overflow(int c) override {
    if (c == traits_type::eof()) return 0;
    if (c == '\n') {
      say(line());
      line().clear();
    } else {
      line().push_back(static_cast<char>(c));
    }
    return c;
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    for (std::streamsize i = 0; i < n; ++i) overflow(static_cast<unsigned char>(s[i]));
    return n;
  }

 private:
  static std::string& line() {
    static thread_local std::string l;
    return l;
  }
};

}  // namespace

Format parse_format(std::string_view name) { return name == "json" ? Format::Json : Format::Text; }

void use_format(Format f, const std::string& program) {
  set_program(program);
  g_format = f;
  static LineBuf buf;
  if (f == Format::Json) std::cerr.rdbuf(&buf);
}

Format format() { return g_format.load(); }

void say(std::string_view text, std::string_view chip, std::string_view imei) {
  if (g_format.load() == Format::Text) {
    std::string l(text);
    l.push_back('\n');
    std::fwrite(l.data(), 1, l.size(), stderr);
    return;
  }
  static JsonLog log(program(), "stderr");
  std::string_view rest = strip_program(text);
  Fields f;
  long code = error_code_at(rest);
  std::string device;
  if (code < 0) {
    const auto colon = rest.find(": ");
    if (colon != std::string_view::npos && error_code_at(rest.substr(colon + 2)) >= 0) {
      device = std::string(rest.substr(0, colon));
      code = error_code_at(rest.substr(colon + 2));
    }
  }
  const bool is_error = code >= 0;
  const bool is_warning = !is_error && (rest.find("warning") != std::string_view::npos ||
                                        rest.find("WARNING") != std::string_view::npos ||
                                        rest.find("waiting for") != std::string_view::npos);
  std::string chip_id(chip);
  if (chip_id.empty()) chip_id = ChipId::is_valid(device) ? device : chip_in(text);
  if (!device.empty() && device != chip_id) f.str("device", device);
  if (code > 0) f.num("code", code);
  f.str("message", text);
  log.device(is_error ? Level::Error : is_warning ? Level::Warn : Level::Info,
             is_error ? "error" : is_warning ? "warning" : "message", chip_id,
             imei.empty() ? imei_in(text) : std::string(imei), f);
}

}  // namespace keyline::core::log
