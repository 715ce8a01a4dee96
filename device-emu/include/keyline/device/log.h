// One JSON log line per event on stderr (core/json_log.h), the chip ID as "chip". Callers pass messages that never
// hold key bytes (core errors are written that way too).
#pragma once

#include <string>

namespace keyline::device {

void log_line(const std::string& chip_id, const std::string& message);
void set_quiet(bool quiet) noexcept;

}  // namespace keyline::device
