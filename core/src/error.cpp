#include "keyline/core/error.h"

namespace keyline::core {

int exit_code_for(ErrorCode code) noexcept {
  const int n = static_cast<int>(code);
  if (code == ErrorCode::Usage || code == ErrorCode::Config) return exit_code::usage;
  if (code == ErrorCode::DbConnection || code == ErrorCode::Network || code == ErrorCode::Timeout)
    return exit_code::unavailable;
  // PC/SC (docs/readers.md): no pcscd, no matching reader, a mute card, a reader or card gone are a
  // device that cannot be reached; the card refusing extended length is the peer refusing.
  if (n >= 1420 && n <= 1425) return exit_code::unavailable;
  if (code == ErrorCode::ExtendedLengthRefused) return exit_code::refused;
  // docs/channel.md: a chip that is not genuine or breaks the channel is the peer refusing.
  if (n >= 1191 && n <= 1195) return exit_code::refused;
  if (code == ErrorCode::DbUniqueViolation || code == ErrorCode::Http) return exit_code::refused;
  if (n >= 1250 && n < 1300) return exit_code::hsm;
  // keyline-device: an empty flash (2002) or an image a boot check rejects (2004) is bad input.
  if (n == 2002 || n == 2004) return exit_code::bad_input;
  // 2021: a KPS answer that is unsigned, forged or bound to another request is the peer refused, as a
  // chip that breaks the channel is (docs/kps.md "Signed answers").
  if (n == 2021) return exit_code::refused;
  // keyline-station (station/include/keyline/station/errors.h): 4021 = public DB unreachable, the
  // record waits in the outbox; device, public DB or other-station refusals and keys that already
  // exist are the peer refusing; 4001 = the pool is empty (nothing to claim: unavailable).
  if (n == 4021 || n == 4001) return exit_code::unavailable;
  // 4033: a certificate `keys install-cert` refuses (another key, another root, another profile).
  // 4034 (a custody step refused: docs/custody.md), 4035 (a custody file that does not verify).
  if ((n >= 4010 && n <= 4012) || n == 4020 || n == 4030 || (n >= 4033 && n <= 4035) || n == 4040)
    return exit_code::refused;
  // 4031 keys missing: run `keys init` first; 4032 a PKI directory others can change: fix its owner or mode.
  if (n == 4031 || n == 4032) return exit_code::usage;
  // keyline-service (service/include/keyline/service/errors.h): a campaign input or module that does not
  // parse or verify is bad input; a campaign name reused with another payload is refused; the public DB
  // answering an error is a server that cannot serve.
  // message (docs/service.md "Messages from a third party"): a record that does not verify, an unknown
  // IMEI or a message too large for the device are bad input.
  if (n == 8020 || n == 8030 || n == 8002 || n == 8050 || n == 8051) return exit_code::bad_input;
  if (n == 8021) return exit_code::refused;
  if (n == 8040) return exit_code::unavailable;
  if (n >= 1000 && n < 1250) return exit_code::bad_input;
  return exit_code::failure;
}

}  // namespace keyline::core
