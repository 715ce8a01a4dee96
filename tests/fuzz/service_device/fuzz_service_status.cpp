// The GET STATUS answer of the service channel (core/service_module.h) as keyline-service reads it
// from a device: a status that parses encodes back to the same bytes; anything else is BadServiceModule.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/error.h"
#include "keyline/core/service_module.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const auto s = service::parse_device_status(data, size);
    if (service::encode_device_status(s) != Bytes(data, data + size)) std::abort();
  } catch (const FormatError& e) {
    if (e.code() != ErrorCode::BadServiceModule) std::abort();
  }
  return 0;
}
