// The SCP03 handshake's parsers of untrusted bytes (core/scp03_session.h): the host reads the card's
// INITIALIZE UPDATE answer, the card reads EXTERNAL AUTHENTICATE and PUT KEY. An answer that parses
// encodes back to the same bytes; no input opens a session or yields a key without the keys; every
// failure is a typed keyline error.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/apdu.h"
#include "keyline/core/error.h"
#include "keyline/core/scp03_session.h"

namespace {
using namespace keyline::core;
const scp::Scp03StaticKeys& statics() {
  static const scp::Scp03StaticKeys k = scp::static_keys_from_comm(SecureBytes(32, 0x5A));
  return k;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto a = scp::parse_initialize_update_answer(data, size);
    if (scp::encode_initialize_update_answer(a) != Bytes(data, data + size)) std::abort();
  } catch (const FormatError& e) {
    if (e.code() != ErrorCode::BadApdu) std::abort();
  }
  CommandApdu c;
  try {
    c = decode_command(data, size);
  } catch (const FormatError&) {
    return 0;
  }
  const Bytes host(16, 0x11);
  const auto init = scp::card_initialize(statics(), 1, ChipId::parse("4B4C0001000000000001"), host, 7,
                                         Bytes{0xF0, 0x4B}, 16);
  try {
    (void)scp::card_authenticate(init, host, c, 16);
    std::abort();  // a forged EXTERNAL AUTHENTICATE opened a session
  } catch (const scp::SecureChannelError&) {
  }
  try {
    const auto put = scp::parse_put_comm_key(SecureBytes(16, 0x42), c);
    if (put.comm.size() != 32) std::abort();
  } catch (const FormatError& e) {
    if (e.code() != ErrorCode::BadApdu) std::abort();
  }
  return 0;
}
