// DGI sequences from untrusted bytes (STORE DATA payloads, flash images). Whatever decodes must
// re-encode to exactly the input: the decoder accepts only the canonical form.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "keyline/core/dgi.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const auto dgis = decode_dgis(data, size);
    const SecureBytes again = encode_dgis(dgis);
    if (again.size() != size || (size > 0 && std::memcmp(again.data(), data, size) != 0)) std::abort();
    for (const auto& d : dgis)
      if (find_dgi(dgis, d.tag) == nullptr) std::abort();
  } catch (const Error&) {
  }
  return 0;
}
