// Data package from untrusted bytes (what a device receives over STORE DATA). Whatever decodes must
// encode to a package that decodes to the same content.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/data_package.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const DataPackage p = DataPackage::decode(SecureBytes(data, data + size));
    const SecureBytes again = p.encode();
    const DataPackage q = DataPackage::decode(again);
    if (q.encode() != again || q.comm_key != p.comm_key || q.app_items != p.app_items) std::abort();
  } catch (const FormatError&) {
  }
  return 0;
}
