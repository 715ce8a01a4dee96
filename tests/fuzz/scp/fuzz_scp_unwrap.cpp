// Secured commands and answers from a hostile peer under fixed session keys: the card's
// unwrap_command and the host's unwrap_response (after it sent a wrapped command) throw
// SecureChannelError or FormatError(BadApdu) only, and after one error every later call throws.
// The input's first byte picks the MAC length and the side; the rest is the APDU.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/apdu.h"
#include "keyline/core/error.h"
#include "keyline/core/scp03.h"

namespace {

using namespace keyline::core;

scp::SecureMessaging session(std::size_t mac_len) {
  scp::SessionKeys keys{SecureBytes(16, 0x11), SecureBytes(16, 0x22), SecureBytes(16, 0x33),
                        SecureBytes(16, 0x44)};
  return scp::SecureMessaging(keys, Bytes(16, 0x00), mac_len);
}

bool dead(scp::SecureMessaging& s) {
  try {
    CommandApdu c;
    c.cla = 0x80;
    (void)s.wrap_command(c);
    return false;
  } catch (const scp::SecureChannelError&) {
    return true;
  }
}

void card_side(const std::uint8_t* data, std::size_t size, std::size_t mac_len) {
  scp::SecureMessaging card = session(mac_len);
  try {
    const CommandApdu plain = card.unwrap_command(decode_command(data, size));
    (void)card.wrap_response(ResponseApdu{plain.data, sw::ok});
  } catch (const scp::SecureChannelError&) {
    if (!dead(card)) std::abort();
  } catch (const FormatError& e) {
    if (e.code() != ErrorCode::BadApdu) std::abort();
  }
}

void host_side(const std::uint8_t* data, std::size_t size, std::size_t mac_len) {
  scp::SecureMessaging host = session(mac_len);
  CommandApdu c;
  c.cla = 0x80;
  c.ins = 0xCA;
  c.data = SecureBytes(5, 0xAB);
  (void)host.wrap_command(c);
  try {
    (void)host.unwrap_response(decode_response(data, size));
  } catch (const scp::SecureChannelError&) {
    if (!dead(host)) std::abort();
  } catch (const FormatError& e) {
    if (e.code() != ErrorCode::BadApdu) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t mac_len = (data[0] & 0x01) ? 16 : 8;
  if (data[0] & 0x02)
    host_side(data + 1, size - 1, mac_len);
  else
    card_side(data + 1, size - 1, mac_len);
  return 0;
}
