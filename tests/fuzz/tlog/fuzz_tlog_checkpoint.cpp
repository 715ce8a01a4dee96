// Checkpoint bodies (core::tlog::parse_checkpoint, C2SP tlog-checkpoint "Note text"): whatever
// parses is the one canonical text of its checkpoint, so formatting it gives the input back.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "keyline/core/checkpoint.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  const std::string text(reinterpret_cast<const char*>(data), size);
  tlog::Checkpoint c;
  try {
    c = tlog::parse_checkpoint(text);
  } catch (const FormatError&) {
    return 0;
  }
  if (tlog::checkpoint_text(c) != text || c.extensions.size() > tlog::max_extension_lines) std::abort();
  return 0;
}
