// GlobalPlatform SCP03 (Card Specification v2.3 Amendment D v1.2): the session key derivation and
// the secure messaging every command runs under once a channel is open. Used after SCP11a's key
// agreement on the personalization channel (core/scp11.h, docs/channel.md) and on its own by the
// device service server's channel (issue #16). One implementation for both sides: the host
// (station, service server) wraps commands and unwraps answers; the card (keyline-device) unwraps
// commands and wraps answers. Known answers: tests/vectors/globalplatform (S8 and S16).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "keyline/core/apdu.h"
#include "keyline/core/bytes.h"
#include "keyline/core/error.h"

namespace keyline::core::scp {

// Amendment D section 7.1.1 (EXTERNAL AUTHENTICATE P1) and Amendment F section 6.5.2: the security
// level bits. keyline always runs at kFullLevel.
namespace level {
constexpr std::uint8_t c_mac = 0x01;
constexpr std::uint8_t c_dec = 0x02;
constexpr std::uint8_t r_mac = 0x10;
constexpr std::uint8_t r_enc = 0x20;
}  // namespace level
constexpr std::uint8_t kFullLevel = level::c_mac | level::c_dec | level::r_mac | level::r_enc;  // 0x33

// Session keys (AES-128 or AES-256, all the same length). S-DEK is kept for key transport under the
// channel (issue #16's key rotation); SCP03 proper uses the static DEK for that.
struct SessionKeys {
  SecureBytes enc, mac, rmac, dek;
};

// Amendment D section 4.1.5 (data derivation scheme): the KDF of NIST SP 800-108 in counter mode
// with AES-CMAC as PRF, the input `00`x11 || constant || `00` || L (2 bytes, bits) || counter
// (1 byte) || context. `bits` is a multiple of 64 up to 256. Throws CryptoError(Crypto) for a key
// that is not 16 or 32 bytes.
SecureBytes scp03_kdf(const SecureBytes& key, std::uint8_t constant, const Bytes& context, std::size_t bits);

// The derivation constants of Amendment D section 4.1.5 (used in sections 6.2.1 and 6.2.2).
namespace kdf_constant {
constexpr std::uint8_t card_cryptogram = 0x00;
constexpr std::uint8_t host_cryptogram = 0x01;
constexpr std::uint8_t card_challenge = 0x02;
constexpr std::uint8_t s_enc = 0x04;
constexpr std::uint8_t s_mac = 0x06;
constexpr std::uint8_t s_rmac = 0x07;
}  // namespace kdf_constant

struct Scp03StaticKeys {
  SecureBytes enc, mac, dek;
};
// context = host challenge || card challenge (8 + 8 in S8, 16 + 16 in S16).
SessionKeys derive_scp03_session(const Scp03StaticKeys& keys, const Bytes& host_challenge, const Bytes& card_challenge);
// The card (constant 00) or host (01) cryptogram: scp03_kdf(S-MAC, constant, context, 8 * mac_len).
Bytes scp03_cryptogram(const SecureBytes& s_mac, std::uint8_t constant, const Bytes& host_challenge,
                       const Bytes& card_challenge, std::size_t mac_len);

// A broken secure channel: a wrong C-MAC or R-MAC, bad padding, a counter run out, a command outside
// the session. The session is dead after it: the card answers 6982 and forgets its keys; the host
// closes the link.
class SecureChannelError : public Error {
 public:
  using Error::Error;  // ErrorCode::SecureChannel
};

// Secure messaging after authentication (Amendment D sections 6.2.4-6.2.7), shared by both sides.
// mac_len is 8 (S8) or 16 (S16); `chain` is the initial MAC chaining value: 16 zero bytes for SCP03's
// EXTERNAL AUTHENTICATE, the receipt for SCP11 (Amendment F section 6.5.2.3).
class SecureMessaging {
 public:
  SecureMessaging(SessionKeys keys, Bytes chain, std::size_t mac_len, std::uint8_t level = kFullLevel);

  // --- host side ---
  // C-MAC only, no encryption and no counter step: SCP03's EXTERNAL AUTHENTICATE. Its answer has
  // no R-MAC and is not passed to unwrap_response.
  CommandApdu mac_command(const CommandApdu& plain);
  // CLA | 04, data encrypted (AES-CBC, ICV = AES(S-ENC, counter), ISO 9797-1 method 2 padding) when
  // C-DEC is on and data is present, then C-MAC over the header with the final Lc. The counter steps
  // once per command (Amendment D section 6.2.6). Le is kept. Throws SecureChannelError when the
  // wrapped data would pass 255 bytes (the caller chains plain commands beforehand).
  CommandApdu wrap_command(const CommandApdu& plain);
  // Checks R-MAC (over the chain value of the command just sent || data || SW), then decrypts with
  // ICV = AES(S-ENC, 80 || counter). An answer with no data and a SW other than 9000/62XX/63XX has no
  // R-MAC (section 6.2.5) and is returned as it is. Throws SecureChannelError.
  ResponseApdu unwrap_response(const ResponseApdu& wrapped);

  // --- card side ---
  // Checks the C-MAC and decrypts: the inverse of wrap_command. A command without CLA bit 04 or with
  // a wrong MAC throws SecureChannelError; the counter steps on success only.
  CommandApdu unwrap_command(const CommandApdu& wrapped);
  // The inverse of unwrap_response for the command unwrap_command last accepted.
  ResponseApdu wrap_response(const ResponseApdu& plain);
  // Checks EXTERNAL AUTHENTICATE's C-MAC (mac_command's inverse). The card answers it plain
  // (9000), not through wrap_response.
  CommandApdu unmac_command(const CommandApdu& wrapped);

  std::size_t mac_len() const noexcept { return m_mac_len; }
  std::uint32_t counter() const noexcept { return m_counter; }
  const SecureBytes& dek() const noexcept { return m_keys.dek; }

 private:
  void require_alive() const;
  [[noreturn]] void fail(const std::string& why);

  SessionKeys m_keys;
  Bytes m_chain;  // the full 16-byte CMAC of the last command
  std::size_t m_mac_len;
  std::uint8_t m_level;
  std::uint32_t m_counter = 1;         // the encryption counter of the next command
  std::uint32_t m_answer_counter = 0;  // the counter of the command whose answer is due
  bool m_answer_due = false;           // a wrapped command was sent (host) or accepted (card)
  bool m_dead = false;                 // a SecureChannelError happened: every later call throws
};

}  // namespace keyline::core::scp
