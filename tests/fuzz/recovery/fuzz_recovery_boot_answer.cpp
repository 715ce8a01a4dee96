// The recovery tool's BOOT STAGED answer (recovery::parse_boot_answer): only FormatError may escape;
// an answer that parses gives an IMEI and two 64-digit fingerprints that are the answer's bytes.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/bytes.h"
#include "keyline/core/error.h"
#include "keyline/recovery/recovery.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline;
  try {
    const recovery::BootAnswer a = recovery::parse_boot_answer(core::SecureBytes(data, data + size));
    if (size != 79 || a.identity_key_sha256.size() != 64 || a.transport_key_sha256.size() != 64) std::abort();
    if (a.imei.str() != std::string(reinterpret_cast<const char*>(data), 15)) std::abort();
    if (a.identity_key_sha256 + a.transport_key_sha256 != core::to_hex(data + 15, 64)) std::abort();
  } catch (const core::FormatError&) {
  }
  return 0;
}
