// MUTUAL AUTHENTICATE as the card reads it (scp11::parse_mutual_authenticate over a decoded command)
// and its answer as the station reads it (parse_mutual_authenticate_answer). What parses encodes
// back to the same bytes; a failure is FormatError(BadApdu) only.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/apdu.h"
#include "keyline/core/error.h"
#include "keyline/core/scp11.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const CommandApdu c = decode_command(data, size);
    const scp11::MutualAuthRequest r = scp11::parse_mutual_authenticate(c);
    const CommandApdu again = scp11::mutual_authenticate_command(r.sd, r.ephemeral_point);
    if (again.data != c.data || again.p1 != c.p1 || again.p2 != c.p2) std::abort();
  } catch (const FormatError& e) {
    if (e.code() != ErrorCode::BadApdu) std::abort();
  }
  try {
    const scp11::MutualAuthAnswer a = scp11::parse_mutual_authenticate_answer(data, size);
    if (scp11::encode_mutual_authenticate_answer(a) != Bytes(data, data + size)) std::abort();
  } catch (const FormatError& e) {
    if (e.code() != ErrorCode::BadApdu) std::abort();
  }
  return 0;
}
