#include "keyline/device/log.h"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace keyline::device {

namespace {
std::mutex g_log_mutex;
std::atomic<bool> g_quiet{false};
}  // namespace

void set_quiet(bool quiet) noexcept { g_quiet = quiet; }

void log_line(const std::string& chip_id, const std::string& message) {
  if (g_quiet) return;
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::lock_guard<std::mutex> lock(g_log_mutex);
  std::fprintf(stderr, "%s keyline-device %s: %s\n", stamp, chip_id.c_str(), message.c_str());
}

}  // namespace keyline::device
