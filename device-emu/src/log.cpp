#include "keyline/device/log.h"

#include <atomic>
#include "keyline/core/cplc.h"
#include "keyline/core/json_log.h"

namespace keyline::device {

namespace {
std::atomic<bool> g_quiet{false};

// Not a chip ID: the emulator itself ("server", an address).
bool is_chip_id(const std::string& s) { return core::ChipId::is_valid(s); }

// The emulator's messages say what went wrong in words; those are its warnings.
core::log::Level level_of(const std::string& m) {
  for (const char* w : {"failed", "refused", "error", "cannot", "unreadable", "injected"})
    if (m.find(w) != std::string::npos) return core::log::Level::Warn;
  return core::log::Level::Info;
}
// "personalized, IMEI 357805020000007": the line is about that IMEI too (docs/operations.md, "Logs").
std::string imei_in(const std::string& m) {
  const auto at = m.find("IMEI ");
  if (at == std::string::npos || m.size() < at + 5 + 15) return "";
  const std::string imei = m.substr(at + 5, 15);
  return imei.find_first_not_of("0123456789") == std::string::npos ? imei : "";
}
}  // namespace

void set_quiet(bool quiet) noexcept { g_quiet = quiet; }

// One JSON line (core/json_log.h, docs/operations.md "Logs"): event "device", the chip and IMEI when the
// line is about them, the message as written.
void log_line(const std::string& chip_id, const std::string& message) {
  if (g_quiet) return;
  static core::log::JsonLog log("keyline-device", "stderr");
  core::log::Fields f;
  if (!is_chip_id(chip_id)) f.str("source", chip_id);
  f.str("message", message);
  log.device(level_of(message), "device", is_chip_id(chip_id) ? chip_id : "", imei_in(message), f);
}

}  // namespace keyline::device
