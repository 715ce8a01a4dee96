#include "keyline/station/fault_hook.h"

#include "keyline/core/error.h"

namespace keyline::station {

FaultHook FaultHook::from_env() {
  FaultHook h;
  const char* spec_c = std::getenv("KEYLINE_STATION_CRASH_AT");
  if (!spec_c || !*spec_c) return h;
#ifndef KEYLINE_FAULT_HOOKS
  throw core::ConfigError(core::ErrorCode::Config,
                          "KEYLINE_STATION_CRASH_AT is set, but this keyline-station was built without fault hooks "
                          "(KEYLINE_FAULT_HOOKS=OFF): unset it");
#else
  const std::string spec = spec_c;
  const auto colon = spec.find(':');
  h.m_step = spec.substr(0, colon);
  if (colon != std::string::npos) {
    char* end = nullptr;
    const long n = std::strtol(spec.c_str() + colon + 1, &end, 10);
    if (n < 1 || *end != '\0')
      throw core::ConfigError(core::ErrorCode::Config, "KEYLINE_STATION_CRASH_AT: N in <step>:N must be a positive number");
    h.m_nth = n;
  }
  return h;
#endif
}

}  // namespace keyline::station
