// The stderr lines of the interactive CLIs (keyline-station, keyline-ceremony, keyline-recovery): text, as
// they always were, or with --log-format json / KEYLINE_LOG_FORMAT=json one JSON object per line in
// core/json_log.h's shape, the text in "message" (docs/operations.md, "Logs"). stdout never changes.
#pragma once

#include <string>
#include <string_view>

namespace keyline::core::log {

enum class Format { Text, Json };

// "text" or "json" (the options check the value first, so anything else is Text).
Format parse_format(std::string_view name);
// Sets the process's format and program name (the JSON lines' "program"); Json also routes every line
// written to std::cerr through say().
void use_format(Format format, const std::string& program);
Format format();

// One line the program says on stderr, without its newline. Text: the line as is. Json: a line with
// level and event from its head ("keyline-x: [DEVICE: ]error NNNN: " is level error, event error, code
// NNNN and device DEVICE), chip (given, else DEVICE when that is a chip ID, else the 20 hex digits after
// "chip "), imei (given, or the 15 digits
// after "IMEI "), and the text as message.
void say(std::string_view text, std::string_view chip = {}, std::string_view imei = {});

}  // namespace keyline::core::log
