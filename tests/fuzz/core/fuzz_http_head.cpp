// The public DB's and the KPS's request-head parser (core/src/http_server_parse.h) on untrusted bytes.
// Properties: it never throws and never reads past its input; a head found byte by byte (the way a
// slow client sends it) ends where a head found at once ends; a complete head is within the limits
// it was given (bytes and header fields); a head it accepts ends every line in CRLF (no bare LF that
// a proxy would read differently), and its request has a method, a target that starts the path,
// lower-case header names without CR, LF or NUL and values of visible ASCII, SP and HTAB only (so
// nothing it passes on can split a reply or a log line).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "http_server_parse.h"

namespace {

constexpr std::size_t kMaxHead = 4096;
constexpr std::size_t kMaxBody = 65536;
constexpr std::size_t kMaxFields = 20;

bool clean(const std::string& s) {
  for (const char c : s)
    if (c == '\r' || c == '\n' || c == '\0') return false;
  return true;
}

bool field_value(const std::string& s) {
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && u != '\t') || u >= 0x7f) return false;
  }
  return true;
}

bool crlf_only(std::string_view head) {
  for (std::size_t i = 0; i < head.size(); ++i)
    if (head[i] == '\n' && (i == 0 || head[i - 1] != '\r')) return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core::http::detail;
  const std::string_view buf(reinterpret_cast<const char*>(data), size);
  const std::size_t once = head_end(buf, 0);
  // Byte by byte, each call told how much the previous one searched in vain.
  std::size_t scanned = 0, found = std::string_view::npos;
  for (std::size_t n = 1; n <= size && found == std::string_view::npos; ++n) {
    found = head_end(buf.substr(0, n), scanned);
    scanned = n;
  }
  if (found != once) std::abort();
  if (leading_empty_lines(buf) > size) std::abort();

  const HeadResult r = parse_head(buf, kMaxHead, kMaxBody, kMaxFields);
  switch (r.state) {
    case HeadState::Complete:
      if (r.head_bytes != once || r.head_bytes > size || r.head_bytes > kMaxHead + 3) std::abort();
      if (r.content_length > kMaxBody) std::abort();
      if (!crlf_only(buf.substr(0, r.head_bytes)) || r.request.headers.size() > kMaxFields) std::abort();
      if (r.request.method.empty() || !clean(r.request.method) || !clean(r.request.target)) std::abort();
      if (r.request.target.compare(0, r.request.path.size(), r.request.path) != 0) std::abort();
      for (const auto& [name, value] : r.request.headers) {
        if (name.empty() || !clean(name) || !field_value(value)) std::abort();
        for (const char c : name)
          if (c >= 'A' && c <= 'Z') std::abort();
      }
      break;
    case HeadState::Refused:
      if (r.refusal.status < 400 || r.refusal.status > 599 || r.refusal.slug.empty()) std::abort();
      (void)serialize_reply(problem_reply(r.refusal), false);
      break;
    case HeadState::Incomplete:
      if (once != std::string_view::npos && once <= kMaxHead) std::abort();
      break;
  }
  return 0;
}
