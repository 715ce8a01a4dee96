#include <botan/hash.h>
#include <botan/hex.h>
#include <botan/system_rng.h>

#include <cstdio>
#include <ctime>
#include <regex>

#include "context.h"
#include "keyline/core/http.h"

namespace keyline::kps {

const http::Problems problem{"https://keyline.example/problems/kps/"};

std::string q(const std::string& s) { return "\"" + http::json_escape(s) + "\""; }

std::string ts_col(const std::string& col) {
  return "to_char(" + col + " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";
}

bool is_uuid(const std::string& s) {
  static const std::regex re("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$");
  return std::regex_match(s, re);
}

bool is_label(const std::string& s) {
  static const std::regex re("^[A-Za-z0-9._-]{1,64}$");
  return std::regex_match(s, re);
}

// A version 4 UUID (RFC 9562 section 5.4), made here rather than by the database so that a transaction
// retried after a lost commit answer inserts the same id again (and finds it) instead of a second one.
std::string new_uuid() {
  std::uint8_t b[16];
  Botan::system_rng().randomize(b, sizeof b);
  b[6] = static_cast<std::uint8_t>((b[6] & 0x0F) | 0x40);
  b[8] = static_cast<std::uint8_t>((b[8] & 0x3F) | 0x80);
  const std::string h = Botan::hex_encode(b, sizeof b, false);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) + "-" + h.substr(20);
}

std::string sha256_hex(const std::string& data) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(data);
  return Botan::hex_encode(h->final(), false);
}

Reply refused(int status, const std::string& type, const std::string& text, const std::string& detail) {
  Reply r = problem(status, type, text);
  r.log_detail = detail;
  return r;
}

std::int64_t Context::now() const { return static_cast<std::int64_t>(std::time(nullptr)) + config.clock_offset_s; }

void WaitRoom::wake() {
  {
    std::lock_guard<std::mutex> lock(m_mutex);
    ++m_generation;
  }
  m_cv.notify_all();
}

std::uint64_t WaitRoom::generation() {
  std::lock_guard<std::mutex> lock(m_mutex);
  return m_generation;
}

void WaitRoom::wait(std::uint64_t seen, std::chrono::steady_clock::time_point until) {
  std::unique_lock<std::mutex> lock(m_mutex);
  m_cv.wait_until(lock, until, [&] { return m_generation != seen; });
}

}  // namespace keyline::kps
