// The subjectAltName HardwareModuleName decoder (core/cert_profile.h, HardwareModuleNameExtension::
// from_der), which yields the chip ID of every identity and transport certificate the public DB, the
// KPS, the station and the recovery tool read. Properties: only core::FormatError escapes; whatever
// decodes survives its own DER encoding unchanged (decode(encode(decode(x))) == decode(x)).
#include <cstdint>
#include <cstdlib>
#include <vector>

#include <botan/x509_ext.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using keyline::core::HardwareModuleNameExtension;
  try {
    const auto ext = HardwareModuleNameExtension::from_der(std::vector<std::uint8_t>(data, data + size));
    Botan::Extensions exts;
    exts.add(ext.copy(), false);  // Extensions encodes through encode_inner
    const auto again = HardwareModuleNameExtension::from_der(exts.get_extension_bits(ext.oid_of()));
    if (again.hw_type() != ext.hw_type() || again.hw_serial() != ext.hw_serial()) std::abort();
  } catch (const keyline::core::FormatError&) {
  }
  return 0;
}
