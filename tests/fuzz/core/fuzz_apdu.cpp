// Command and response APDUs from untrusted bytes. A command that decodes must re-encode to the
// same bytes (one encoding per command), and so must a response; chaining the decoded command and
// joining the parts must give back its data.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "keyline/core/apdu.h"
#include "keyline/core/error.h"

namespace {

bool same(const keyline::core::SecureBytes& b, const std::uint8_t* data, std::size_t size) {
  return b.size() == size && (size == 0 || std::memcmp(b.data(), data, size) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const CommandApdu c = decode_command(data, size);
    if (!same(encode_command(c), data, size)) std::abort();
    // Chunk size from the input so that short and long chains are both tried.
    const std::size_t chunk = size > 4 ? std::size_t{data[size - 1]} + 1 : 255;
    SecureBytes joined;
    const auto parts = chain_command(c, chunk);
    for (std::size_t i = 0; i < parts.size(); ++i) {
      if (parts[i].data.size() > chunk) std::abort();
      // All but the last carry the chaining bit; the last keeps the caller's CLA, which may have
      // that bit already (a command that is itself part of a longer chain).
      const bool last = i + 1 == parts.size();
      if (last ? parts[i].cla != c.cla : !parts[i].chained()) std::abort();
      if (!last && parts[i].le) std::abort();
      (void)encode_command(parts[i]);
      joined.insert(joined.end(), parts[i].data.begin(), parts[i].data.end());
    }
    if (joined != c.data) std::abort();
  } catch (const Error&) {
  }
  try {
    const ResponseApdu r = decode_response(data, size);
    if (!same(encode_response(r), data, size)) std::abort();
    (void)sw_text(r.sw);
    ResponseChainer ch;
    SecureBytes all;
    ResponseApdu piece = ch.start(r, size > 0 ? data[0] : 256);
    all.insert(all.end(), piece.data.begin(), piece.data.end());
    while (ch.pending()) {
      piece = ch.next(256);
      all.insert(all.end(), piece.data.begin(), piece.data.end());
    }
    if (all != r.data || piece.sw != r.sw) std::abort();
  } catch (const Error&) {
  }
  return 0;
}
