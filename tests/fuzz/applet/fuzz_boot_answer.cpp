// BOOT STAGED answer from untrusted bytes (core::applet::parse_boot_answer). Only FormatError may
// escape; an answer that parses must re-encode to the same 79 bytes.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const applet::BootAnswer a = applet::parse_boot_answer(data, size);
    if (size != applet::kBootAnswerSize || !Imei::is_valid(a.imei.str())) std::abort();
    if (applet::encode_boot_answer(a) != SecureBytes(data, data + size)) std::abort();
  } catch (const FormatError&) {
  }
  return 0;
}
