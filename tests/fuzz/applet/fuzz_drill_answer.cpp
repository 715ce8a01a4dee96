// RESTORE DRILL answer from untrusted bytes (core::applet::parse_drill_answer): a 32-byte digest or
// FormatError, nothing else.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const Bytes d = applet::parse_drill_answer(data, size);
    if (d.size() != applet::kDrillAnswerSize || d != Bytes(data, data + size)) std::abort();
    if (applet::encode_drill_answer(d) != SecureBytes(data, data + size)) std::abort();
  } catch (const FormatError&) {
  }
  return 0;
}
