// STATUS answer from untrusted bytes (core::applet::parse_status). Only FormatError may escape; an
// answer that parses must be exactly the encoding of what was parsed (one layout, nothing ignored).
#include <cstdint>
#include <cstdlib>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const applet::Status s = applet::parse_status(data, size);
    if (s.imei && !s.personalized()) std::abort();
    if (applet::encode_status(s) != SecureBytes(data, data + size)) std::abort();
  } catch (const FormatError&) {
  }
  return 0;
}
