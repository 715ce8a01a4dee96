#include "keyline/core/scp11.h"

#include <botan/bigint.h>
#include <botan/ec_group.h>
#include <botan/ecdh.h>
#include <botan/exceptn.h>
#include <botan/kdf.h>
#include <botan/mac.h>
#include <botan/mem_ops.h>
#include <botan/system_rng.h>

#include <algorithm>
#include <cstdint>
#include <string>

namespace keyline::core::scp11 {

namespace {

constexpr std::uint8_t kInsGetData = 0xCA;
constexpr std::uint8_t kInsPso = 0x2A;
constexpr std::uint8_t kInsMutualAuth = 0x82;
constexpr std::size_t kMaxCertificates = 8;
constexpr std::size_t kPointSize = 65;
constexpr std::size_t kReceiptSize = 16;
constexpr std::size_t kPsoChunk = 255;
// Amendment F section 7.6 (MUTUAL AUTHENTICATE): the control reference template for SCP11 with key usage 3C
// (C-MAC, C-DEC, R-MAC, R-ENC), key type 88 (AES) and key length 10 (AES-128).
constexpr std::uint8_t kControlReference[] = {
    0xA6, 0x0D, 0x90, 0x02, 0x11, kScp11aParameter, 0x95, 0x01, 0x3C, 0x80, 0x01, 0x88, 0x81, 0x01, 0x10};
constexpr std::size_t kParameterOffset = 5;
// Amendment F section 6.5.2.3: SharedInfo = key usage || key type || key length.
constexpr std::uint8_t kSharedInfo[] = {0x3C, 0x88, 0x10};
constexpr std::uint8_t kEpkTag[] = {0x5F, 0x49, 0x41};
constexpr std::uint8_t kReceiptTag[] = {0x86, 0x10};

[[noreturn]] void bad_store(const std::string& why) {
  throw FormatError(ErrorCode::BadCertificateStore, "certificate store: " + why);
}
[[noreturn]] void bad_apdu(const std::string& why) { throw FormatError(ErrorCode::BadApdu, why); }
[[noreturn]] void crypto_fail(const std::string& why) {
  throw CryptoError(ErrorCode::Crypto, "SCP11: " + why);
}
[[noreturn]] void channel_fail(const std::string& why) {
  throw scp::SecureChannelError(ErrorCode::SecureChannel, "SCP11: " + why);
}

// One BER-TLV length (ISO 7816-4 section 6.3 / X.690 section 8.1.3) in its shortest form: 00-7F,
// 81 80-FF, 82 0100-FFFF. Returns false for anything else or a length running past `end`.
bool read_length(const std::uint8_t*& p, const std::uint8_t* end, std::size_t& len) {
  if (p == end) return false;
  const std::uint8_t first = *p++;
  if (first < 0x80) {
    len = first;
  } else if (first == 0x81) {
    if (end - p < 1 || p[0] < 0x80) return false;
    len = *p++;
  } else if (first == 0x82) {
    if (end - p < 2 || p[0] == 0x00) return false;
    len = (std::size_t{p[0]} << 8) | p[1];
    p += 2;
  } else {
    return false;
  }
  return static_cast<std::size_t>(end - p) >= len;
}

void put_length(Bytes& out, std::size_t len) {
  if (len >= 0x100) {
    out.push_back(0x82);
    out.push_back(static_cast<std::uint8_t>(len >> 8));
  } else if (len >= 0x80) {
    out.push_back(0x81);
  }
  out.push_back(static_cast<std::uint8_t>(len));
}

// One certificate of the store: an X.509 SEQUENCE (30) or a GP certificate (7F21), kept whole.
Bytes read_certificate(const std::uint8_t*& p, const std::uint8_t* end) {
  const std::uint8_t* start = p;
  if (*p == 0x30) {
    ++p;
  } else if (end - p >= 2 && p[0] == 0x7F && p[1] == 0x21) {
    p += 2;
  } else {
    bad_store("an entry that is neither an X.509 (30) nor a GP (7F21) certificate");
  }
  std::size_t len = 0;
  if (!read_length(p, end, len)) bad_store("a certificate's length is malformed or runs past the store");
  p += len;
  return Bytes(start, p);
}

const Botan::EC_Group& p256() {
  static const Botan::EC_Group group("secp256r1");
  return group;
}

Bytes epk_tlv(const Bytes& point) {
  Bytes out(std::begin(kEpkTag), std::end(kEpkTag));
  out.insert(out.end(), point.begin(), point.end());
  return out;
}

bool starts_with(const std::uint8_t* p, const std::uint8_t* prefix, std::size_t n) {
  return std::equal(prefix, prefix + n, p);
}

// A fresh ephemeral key, or the fixed one of a known-answer test; returns the scalar, fills the point.
SecureBytes ephemeral_key(const SecureBytes& fixed, Bytes& point) {
  try {
    Botan::System_RNG rng;
    const Botan::ECDH_PrivateKey key =
        fixed.empty() ? Botan::ECDH_PrivateKey(rng, p256())
                      : Botan::ECDH_PrivateKey(rng, p256(), Botan::BigInt(fixed.data(), fixed.size()));
    point = key.public_value(Botan::PointGFp::UNCOMPRESSED);
    SecureBytes scalar(32);
    key.private_value().binary_encode(scalar.data(), scalar.size());
    return scalar;
  } catch (const Botan::Exception& e) {
    crypto_fail(std::string("ephemeral key: ") + e.what());
  }
}

void expect_ok(const ResponseApdu& r, const char* what) {
  if (r.sw != sw::ok) channel_fail(std::string(what) + " refused: " + sw_text(r.sw));
}

}  // namespace

CommandApdu get_certificate_store_command(KeyRef sd) {
  CommandApdu c;
  c.cla = 0x00;
  c.ins = kInsGetData;
  c.p1 = 0xBF;
  c.p2 = 0x21;
  c.data = {0xA6, 0x04, 0x83, 0x02, sd.kid, sd.kvn};
  c.le = 256;
  return c;
}

std::vector<Bytes> parse_certificate_store(const std::uint8_t* data, std::size_t len) {
  const std::uint8_t* p = data;
  const std::uint8_t* end = data + len;
  if (len < 2 || p[0] != 0xBF || p[1] != 0x21) bad_store("does not start with tag BF21");
  p += 2;
  std::size_t body = 0;
  if (!read_length(p, end, body)) bad_store("BF21 length is malformed or runs past the data");
  if (static_cast<std::size_t>(end - p) != body) bad_store("bytes after BF21");
  std::vector<Bytes> certificates;
  while (p != end) {
    if (certificates.size() == kMaxCertificates) bad_store("more than 8 certificates");
    certificates.push_back(read_certificate(p, end));
  }
  if (certificates.empty()) bad_store("no certificate");
  return certificates;
}

Bytes encode_certificate_store(const std::vector<Bytes>& certificates) {
  Bytes body;
  for (const auto& c : certificates) body.insert(body.end(), c.begin(), c.end());
  if (body.size() > 0xFFFF) bad_store("more than 65535 bytes");
  Bytes out{0xBF, 0x21};
  put_length(out, body.size());
  out.insert(out.end(), body.begin(), body.end());
  // What keyline sends, it must be able to read back: each entry one whole certificate TLV.
  if (parse_certificate_store(out.data(), out.size()) != certificates)
    bad_store("entries are not whole certificates");
  return out;
}

std::vector<CommandApdu> perform_security_operation_commands(const std::vector<Bytes>& oce_chain,
                                                             KeyRef oce) {
  if (oce_chain.empty()) bad_store("the OCE chain is empty");
  std::vector<CommandApdu> out;
  for (std::size_t i = 0; i < oce_chain.size(); ++i) {
    const Bytes& cert = oce_chain[i];
    const bool more_certificates = i + 1 < oce_chain.size();
    for (std::size_t pos = 0; pos < cert.size(); pos += kPsoChunk) {
      const std::size_t n = std::min(kPsoChunk, cert.size() - pos);
      const bool last_part = pos + n == cert.size();
      CommandApdu c;
      c.cla = last_part ? 0x80 : 0x90;  // ISO 7816-4 section 5.4.1: bit 10 = more parts follow
      c.ins = kInsPso;
      // P1 bit 80 on non-final parts and P2 bit 80 while more certificates follow, as the known
      // answers (tests/vectors/globalplatform) have them.
      c.p1 = static_cast<std::uint8_t>(last_part ? oce.kvn : (oce.kvn | 0x80));
      c.p2 = static_cast<std::uint8_t>(more_certificates ? (oce.kid | 0x80) : oce.kid);
      c.data.assign(cert.begin() + static_cast<std::ptrdiff_t>(pos),
                    cert.begin() + static_cast<std::ptrdiff_t>(pos + n));
      c.le = 256;
      out.push_back(std::move(c));
    }
  }
  return out;
}

CommandApdu mutual_authenticate_command(KeyRef sd, const Bytes& ephemeral_point, std::uint8_t scp_parameter) {
  if (ephemeral_point.size() != kPointSize || ephemeral_point[0] != 0x04)
    crypto_fail("ePK.OCE is not an uncompressed P-256 point");
  CommandApdu c;
  c.cla = 0x80;
  c.ins = kInsMutualAuth;
  c.p1 = sd.kvn;
  c.p2 = sd.kid;
  c.data.assign(std::begin(kControlReference), std::end(kControlReference));
  c.data[kParameterOffset] = scp_parameter;
  const Bytes tlv = epk_tlv(ephemeral_point);
  c.data.insert(c.data.end(), tlv.begin(), tlv.end());
  c.le = 256;
  return c;
}

CommandApdu mutual_authenticate_command(KeyRef sd, const Bytes& ephemeral_point) {
  return mutual_authenticate_command(sd, ephemeral_point, kScp11aParameter);
}

MutualAuthRequest parse_mutual_authenticate(const CommandApdu& c) {
  constexpr std::size_t crt = sizeof kControlReference;
  constexpr std::size_t expected = crt + sizeof kEpkTag + kPointSize;
  if (c.cla != 0x80 || c.ins != kInsMutualAuth) bad_apdu("MUTUAL AUTHENTICATE: not 80 82");
  if (c.data.size() != expected) bad_apdu("MUTUAL AUTHENTICATE: data is not 83 bytes");
  const std::uint8_t* d = c.data.data();
  if (!starts_with(d, kControlReference, crt))
    bad_apdu("MUTUAL AUTHENTICATE: not SCP11a with AES-128 and key usage 3C");
  if (!starts_with(d + crt, kEpkTag, sizeof kEpkTag) || d[crt + sizeof kEpkTag] != 0x04)
    bad_apdu("MUTUAL AUTHENTICATE: no uncompressed ePK.OCE in 5F49");
  MutualAuthRequest r;
  r.sd = KeyRef{c.p2, c.p1};
  r.control_reference.assign(d, d + crt);
  r.ephemeral_point.assign(d + crt + sizeof kEpkTag, d + expected);
  return r;
}

MutualAuthAnswer parse_mutual_authenticate_answer(const std::uint8_t* data, std::size_t len) {
  constexpr std::size_t point_end = sizeof kEpkTag + kPointSize;
  if (len != point_end + sizeof kReceiptTag + kReceiptSize)
    bad_apdu("MUTUAL AUTHENTICATE answer: not 86 bytes");
  if (!starts_with(data, kEpkTag, sizeof kEpkTag) || data[sizeof kEpkTag] != 0x04)
    bad_apdu("MUTUAL AUTHENTICATE answer: no uncompressed ePK.SD in 5F49");
  if (!starts_with(data + point_end, kReceiptTag, sizeof kReceiptTag))
    bad_apdu("MUTUAL AUTHENTICATE answer: no receipt in 86");
  MutualAuthAnswer a;
  a.ephemeral_point.assign(data + sizeof kEpkTag, data + point_end);
  a.receipt.assign(data + point_end + sizeof kReceiptTag, data + len);
  return a;
}

Bytes encode_mutual_authenticate_answer(const MutualAuthAnswer& a) {
  if (a.ephemeral_point.size() != kPointSize || a.ephemeral_point[0] != 0x04 ||
      a.receipt.size() != kReceiptSize)
    crypto_fail("answer needs a 65-byte uncompressed point and a 16-byte receipt");
  Bytes out = epk_tlv(a.ephemeral_point);
  out.insert(out.end(), std::begin(kReceiptTag), std::end(kReceiptTag));
  out.insert(out.end(), a.receipt.begin(), a.receipt.end());
  return out;
}

Scp11Keys derive_scp11_keys(const SecureBytes& sh_see, const SecureBytes& sh_ss) {
  if (sh_see.size() != 32 || sh_ss.size() != 32) crypto_fail("shared secrets are 32 bytes");
  SecureBytes z = sh_see;
  z.insert(z.end(), sh_ss.begin(), sh_ss.end());
  // Amendment F section 6.5.2.3: the X9.63 KDF with SHA-256, which Botan names KDF2 (hash of
  // Z || 32-bit counter from 1 || SharedInfo).
  const auto kdf = Botan::KDF::create_or_throw("KDF2(SHA-256)");
  const SecureBytes out =
      kdf->derive_key(5 * 16, z.data(), z.size(), kSharedInfo, sizeof kSharedInfo, nullptr, 0);
  auto key = [&](std::size_t i) { return SecureBytes(out.begin() + 16 * i, out.begin() + 16 * (i + 1)); };
  Scp11Keys k;
  k.receipt_key = key(0);
  k.session.enc = key(1);
  k.session.mac = key(2);
  k.session.rmac = key(3);
  k.session.dek = key(4);
  return k;
}

Bytes scp11_receipt(const SecureBytes& receipt_key, const Bytes& command_data, const Bytes& card_epk_tlv) {
  if (receipt_key.size() != 16) crypto_fail("the receipt key is AES-128");
  auto mac = Botan::MessageAuthenticationCode::create_or_throw("CMAC(AES-128)");
  mac->set_key(receipt_key);
  mac->update(command_data);
  mac->update(card_epk_tlv);
  const SecureBytes r = mac->final();
  return Bytes(r.begin(), r.end());
}

SecureBytes ecdh_p256(const SecureBytes& private_scalar, const Bytes& peer_point) {
  if (private_scalar.size() != 32) crypto_fail("a P-256 private scalar is 32 bytes");
  // SEC 1 section 3.2.2.1: the peer's point must be a point of the curve, not the point at infinity.
  if (peer_point.size() != kPointSize || peer_point[0] != 0x04)
    crypto_fail("peer key is not an uncompressed P-256 point");
  try {
    const Botan::PointGFp q = p256().OS2ECP(peer_point);
    if (q.is_zero() || !q.on_the_curve()) crypto_fail("peer point is not on P-256");
    const Botan::BigInt d(private_scalar.data(), private_scalar.size());
    if (d.is_zero() || d >= p256().get_order()) crypto_fail("private scalar out of range");
    // SEC 1 section 3.3.1: the shared secret is the x-coordinate of d * Q (P-256 has cofactor 1). The
    // point multiplication directly: an ECDH_PrivateKey would first compute d * G, doubling the cost.
    Botan::System_RNG rng;
    std::vector<Botan::BigInt> ws;
    const Botan::PointGFp shared = p256().blinded_var_point_multiply(q, d, rng, ws);
    if (shared.is_zero()) crypto_fail("ECDH gave the point at infinity");
    SecureBytes x(32);
    shared.get_affine_x().binary_encode(x.data(), x.size());
    return x;
  } catch (const Botan::Exception& e) {
    crypto_fail(std::string("ECDH: ") + e.what());
  }
}

namespace {

void send_certificates(DeviceChannel& inner, const HostParams& params) {
  for (const auto& c : perform_security_operation_commands(params.oce_chain, params.oce))
    expect_ok(inner.transmit(c, 0), "PERFORM SECURITY OPERATION");
}

}  // namespace

scp::SecureMessaging open_host_session(DeviceChannel& inner, const HostParams& params,
                                       const Bytes& sd_public_point) {
  if (!params.static_ecdh) crypto_fail("no static OCE key agreement");
  send_certificates(inner, params);
  Bytes epk_oce;
  const SecureBytes esk_oce = ephemeral_key(params.ephemeral_scalar_for_test, epk_oce);
  const CommandApdu command = mutual_authenticate_command(params.sd, epk_oce, params.scp_parameter);
  const ResponseApdu r = inner.transmit(command, 256);
  expect_ok(r, "MUTUAL AUTHENTICATE");
  const MutualAuthAnswer answer = parse_mutual_authenticate_answer(r.data.data(), r.data.size());
  // Amendment F section 6.5.2.3: ShSee = ECDH(eSK.OCE, ePK.SD), ShSss = ECDH(SK.OCE, PK.SD).
  const Scp11Keys keys =
      derive_scp11_keys(ecdh_p256(esk_oce, answer.ephemeral_point), params.static_ecdh(sd_public_point));
  const Bytes receipt = scp11_receipt(keys.receipt_key, Bytes(command.data.begin(), command.data.end()),
                                      epk_tlv(answer.ephemeral_point));
  if (!Botan::constant_time_compare(receipt.data(), answer.receipt.data(), kReceiptSize))
    channel_fail("wrong receipt");
  return scp::SecureMessaging(keys.session, receipt, params.mac_len);
}

CardHandshake card_handshake(const MutualAuthRequest& request, const Bytes& command_data,
                             const SecureBytes& sd_private_scalar, const Bytes& oce_public_point,
                             std::size_t mac_len) {
  Bytes epk_sd;
  const SecureBytes esk_sd = ephemeral_key({}, epk_sd);
  // The card's side of Amendment F section 6.5.2.3: ShSee = ECDH(eSK.SD, ePK.OCE), ShSss = ECDH(SK.SD,
  // PK.OCE).
  const Scp11Keys keys = derive_scp11_keys(ecdh_p256(esk_sd, request.ephemeral_point),
                                           ecdh_p256(sd_private_scalar, oce_public_point));
  const Bytes receipt = scp11_receipt(keys.receipt_key, command_data, epk_tlv(epk_sd));
  return CardHandshake{encode_mutual_authenticate_answer({epk_sd, receipt}),
                       scp::SecureMessaging(keys.session, receipt, mac_len)};
}

// --- SecureChannel -------------------------------------------------------------------------------

SecureChannel::SecureChannel(DeviceChannel& inner, scp::SecureMessaging session)
    : m_inner(inner), m_session(std::move(session)) {}

void SecureChannel::connect() {
  throw scp::SecureChannelError(
      ErrorCode::SecureChannel,
      "a secure channel opens over a connected link (open_host_session), not by connect");
}

void SecureChannel::close() noexcept {
  m_broken = true;
  m_inner.close();
}

bool SecureChannel::connected() const noexcept { return !m_broken && m_inner.connected(); }

ResponseApdu SecureChannel::transmit(const CommandApdu& command, std::size_t max_response) {
  if (m_broken) channel_fail("the secure channel is closed");
  // The wrapped answer is longer than the plain one by its padding (at most 16) and its R-MAC.
  const std::size_t wrapped_max = max_response > SIZE_MAX - 32 ? max_response : max_response + 32;
  try {
    ResponseApdu r;
    for (const auto& piece : chain_command(command, kMaxPlainPiece)) {
      CommandApdu wrapped = m_session.wrap_command(piece);
      // Every answer under R-MAC carries data, its R-MAC at least, and the inner channel holds an
      // answer to the command's Ne (ISO 7816-4 section 5.1: none without Le): so each secured command
      // asks for up to 256 bytes, the most a short APDU can, and the rest comes in 61XX pieces. Le is
      // outside the C-MAC (Amendment D section 6.2.4), so this changes no MAC.
      wrapped.le = 256;
      r = m_session.unwrap_response(m_inner.transmit(wrapped, wrapped_max));
      if (piece.chained() && r.sw != sw::ok) return r;
    }
    if (r.data.size() > max_response)
      bad_apdu("answer to " + command_header(command) + " longer than asked for");
    return r;
  } catch (...) {
    // Whatever broke the exchange (a MAC, the link, a malformed answer), the two sides' counters
    // and chaining values no longer agree: the session cannot go on.
    close();
    throw;
  }
}

const std::string& SecureChannel::address() const noexcept { return m_inner.address(); }
const Bytes& SecureChannel::atr() const noexcept { return m_inner.atr(); }

}  // namespace keyline::core::scp11
