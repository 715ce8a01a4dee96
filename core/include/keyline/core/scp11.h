// GlobalPlatform SCP11a (Card Specification v2.3 Amendment F v1.4): the personalization channel
// (docs/channel.md). The chip proves its vendor identity with its static SD key-agreement key (GET
// DATA BF21, certificate from its chip vendor); the station proves it is certified under the
// manufacturer root with its OCE certificate chain (PERFORM SECURITY OPERATION) and static OCE key;
// MUTUAL AUTHENTICATE exchanges ephemeral keys; both sides run the X9.63 KDF (SHA-256) over
// ShSee || ShSss and check the receipt; secure messaging (core/scp03.h) follows at level 33.
// Known answers: tests/vectors/globalplatform (scp11a, scp11c, certificate store).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "keyline/core/apdu.h"
#include "keyline/core/bytes.h"
#include "keyline/core/device_channel.h"
#include "keyline/core/scp03.h"

namespace keyline::core::scp11 {

// Key references (Amendment F section 7.1.1): SD key KID 11 = SCP11a; OCE key reference KID 10.
constexpr std::uint8_t kSdKidScp11a = 0x11;
constexpr std::uint8_t kOceKid = 0x10;
constexpr std::uint8_t kKeyVersion = 0x01;  // keyline's KVN for both (docs/channel.md)
// The SCP11 parameter "i" in tag 90 of MUTUAL AUTHENTICATE (Amendment F section 7.6.2.3): 01 SCP11a,
// 03 SCP11c. keyline's card takes SCP11a only; the host can build SCP11c for the known answers.
constexpr std::uint8_t kScp11aParameter = 0x01;
constexpr std::uint8_t kScp11cParameter = 0x03;
// Plain command data per secured piece: 223 padded is 224, plus a 16-byte MAC (S16) is 240 <= 255.
constexpr std::size_t kMaxPlainPiece = 223;

struct KeyRef {
  std::uint8_t kid = kSdKidScp11a;
  std::uint8_t kvn = kKeyVersion;
};

// --- certificate store (Amendment F section 7.4.2, GET DATA BF21) ------------------------------
// 00 CA BF 21 06 A6 04 { 83 02 KID KVN } 00
CommandApdu get_certificate_store_command(KeyRef sd);
// BF21 { cert || cert ... }: each certificate an X.509 DER SEQUENCE (a GP-format 7F21 certificate is
// returned as its TLV bytes too, but keyline's parties use X.509 only). Order as stored: issuer
// side first, the SD certificate last. Strict TLV: every length checked, nothing after BF21, at
// most 8 certificates. Throws FormatError(BadCertificateStore).
std::vector<Bytes> parse_certificate_store(const std::uint8_t* data, std::size_t len);
inline std::vector<Bytes> parse_certificate_store(const SecureBytes& b) {
  return parse_certificate_store(b.data(), b.size());
}
Bytes encode_certificate_store(const std::vector<Bytes>& certificates);

// --- PERFORM SECURITY OPERATION (Amendment F section 7.5) ----------------------------------------
// Each certificate of the OCE chain (root side first, the OCE certificate last; the root itself is
// not sent: the chip holds it) in chained short APDUs of at most 255 bytes: CLA 90 on non-final
// parts, 80 on the last; P1 = OCE KVN | 80 (as the known answers have it); P2 = OCE KID, | 80 when
// another certificate follows; Le 00.
std::vector<CommandApdu> perform_security_operation_commands(const std::vector<Bytes>& oce_chain, KeyRef oce);

// --- MUTUAL AUTHENTICATE (Amendment F section 7.6) -----------------------------------------------
// 80 82 KVN KID Lc A6 0D {90 02 11 01, 95 01 3C, 80 01 88, 81 01 10} 5F49 41 ePK.OCE 00
// (AES-128 session keys, key usage 3C). `ephemeral_point` is the 65-byte uncompressed P-256 point.
CommandApdu mutual_authenticate_command(KeyRef sd, const Bytes& ephemeral_point);
CommandApdu mutual_authenticate_command(KeyRef sd, const Bytes& ephemeral_point, std::uint8_t scp_parameter);
struct MutualAuthRequest {
  KeyRef sd;
  Bytes control_reference;  // the A6 TLV, whole (the receipt covers it)
  Bytes ephemeral_point;    // ePK.OCE, 65 bytes
};
// The card's parser: exactly the layout above (SCP11a parameter 01, key usage 3C, AES, 16-byte keys).
// Throws FormatError(BadApdu).
MutualAuthRequest parse_mutual_authenticate(const CommandApdu& c);
// Answer data: 5F49 41 ePK.SD || 86 10 receipt. Throws FormatError(BadApdu) for anything else.
struct MutualAuthAnswer {
  Bytes ephemeral_point;  // ePK.SD
  Bytes receipt;          // 16 bytes
};
MutualAuthAnswer parse_mutual_authenticate_answer(const std::uint8_t* data, std::size_t len);
Bytes encode_mutual_authenticate_answer(const MutualAuthAnswer& a);

// --- key agreement (Amendment F section 6.5.2) ---------------------------------------------------
// X9.63 KDF (SHA-256) over ShSee || ShSss with SharedInfo 3C 88 10, 80 bytes cut into receipt key,
// S-ENC, S-MAC, S-RMAC, S-DEK (16 bytes each).
struct Scp11Keys {
  SecureBytes receipt_key;
  scp::SessionKeys session;
};
Scp11Keys derive_scp11_keys(const SecureBytes& sh_see, const SecureBytes& sh_ss);
// AES-CMAC(receipt key, MUTUAL AUTHENTICATE command data || the 5F49 TLV of the answer), 16 bytes.
Bytes scp11_receipt(const SecureBytes& receipt_key, const Bytes& command_data, const Bytes& card_epk_tlv);

// ECDH on P-256 (x-coordinate, SEC 1 section 3.3.1); refuses a point not on the curve. Throws
// CryptoError(Crypto).
SecureBytes ecdh_p256(const SecureBytes& private_scalar, const Bytes& peer_point);

// The host side of one handshake. The static OCE key may sit on a token: `static_ecdh` returns
// ECDH(SK.OCE, peer point) (e.g. CKM_ECDH1_DERIVE, Pkcs11Token::ecdh_derive).
using StaticEcdh = std::function<SecureBytes(const Bytes& peer_point)>;
struct HostParams {
  KeyRef sd;
  KeyRef oce{kOceKid, kKeyVersion};
  std::vector<Bytes> oce_chain;  // DER, root side first, the OCE certificate last (root not included)
  StaticEcdh static_ecdh;
  // Fixed ephemeral scalar for known-answer tests only; empty: a fresh one from the system RNG.
  SecureBytes ephemeral_scalar_for_test;
  std::size_t mac_len = 8;
  std::uint8_t scp_parameter = kScp11aParameter;  // kScp11cParameter for the SCP11c known answers only
};

// What the station learnt from the chip before the handshake: the SD certificate chain as the chip
// returned it, and the SD public point the caller has verified (core/chip_identity.h) and passes in.
// Runs PSO and MUTUAL AUTHENTICATE over `inner` and checks the receipt. Throws
// SecureChannelError(SecureChannel) for a wrong receipt, DeviceRefusal-like errors from `inner` as
// IoError/Error, FormatError(BadApdu) for a malformed answer.
scp::SecureMessaging open_host_session(DeviceChannel& inner, const HostParams& params, const Bytes& sd_public_point);

// The card side: given PK.OCE (from the verified OCE certificate), SK.SD and the parsed request,
// makes eSK.SD, derives the keys, and returns the answer data with its receipt and the session.
struct CardHandshake {
  Bytes answer_data;  // encode_mutual_authenticate_answer
  scp::SecureMessaging session;
};
CardHandshake card_handshake(const MutualAuthRequest& request, const Bytes& command_data,
                             const SecureBytes& sd_private_scalar, const Bytes& oce_public_point,
                             std::size_t mac_len = 8);

// A DeviceChannel that sends everything through an open session: every command wrapped (C-MAC,
// C-DEC), every answer unwrapped (R-MAC, R-ENC); long command data is chained in plain pieces of at
// most 223 bytes (255 less padding and MAC) before wrapping, each piece its own secured command
// with Le 00 (its answer carries at least an R-MAC). 61XX is below the secure messaging: the card
// wraps its whole answer once (one R-MAC, one R-ENC over all of it) and the inner channel's
// transceive fetches it in 61XX pieces with plain GET RESPONSE, as a transport does
// (docs/channel.md); the pieces are ciphertext and the R-MAC covers their join. Any failure inside
// an exchange closes the inner link and every later transmit throws SecureChannelError.
// extended_length() is false: secured commands are short (Amendment D section 6.2.4).
class SecureChannel final : public DeviceChannel {
 public:
  SecureChannel(DeviceChannel& inner, scp::SecureMessaging session);
  void connect() override;  // throws: the inner channel is already connected and authenticated
  void close() noexcept override;
  bool connected() const noexcept override;
  ResponseApdu transmit(const CommandApdu& command, std::size_t max_response = kMaxResponseDefault) override;
  bool extended_length() const noexcept override { return false; }
  void disable_extended_length() noexcept override {}
  const std::string& address() const noexcept override;
  const Bytes& atr() const noexcept override;

 private:
  DeviceChannel& m_inner;
  scp::SecureMessaging m_session;
  bool m_broken = false;
};

}  // namespace keyline::core::scp11
