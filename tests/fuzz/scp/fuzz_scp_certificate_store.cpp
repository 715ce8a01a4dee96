// GET DATA BF21 from an untrusted chip (scp11::parse_certificate_store). A store that parses holds
// 1 to 8 whole certificate TLVs (30 or 7F21) and encodes back to the same bytes (one encoding per
// store); anything else is FormatError(BadCertificateStore) and nothing else.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/error.h"
#include "keyline/core/scp11.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const auto certificates = scp11::parse_certificate_store(data, size);
    if (certificates.empty() || certificates.size() > 8) std::abort();
    for (const auto& c : certificates)
      if (c.empty() || (c[0] != 0x30 && !(c.size() >= 2 && c[0] == 0x7F && c[1] == 0x21))) std::abort();
    if (scp11::encode_certificate_store(certificates) != Bytes(data, data + size)) std::abort();
  } catch (const FormatError& e) {
    if (e.code() != ErrorCode::BadCertificateStore) std::abort();
  }
  return 0;
}
