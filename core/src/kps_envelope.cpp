#include "keyline/core/kps_envelope.h"

#include <memory>

#include <botan/pubkey.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/hpke.h"

namespace keyline::core::kps_envelope {
namespace {

constexpr std::uint8_t kMagic[4] = {'K', 'L', 'K', 'E'};
constexpr const char* kEmsa = "EMSA1(SHA-256)";
constexpr std::size_t kMaxSignatureSize = 72;  // DER SEQUENCE of two 33-byte INTEGERs, P-256

[[noreturn]] void bad(const std::string& what) { throw FormatError(ErrorCode::BadKeyEnvelope, "KLKE: " + what); }

// A cursor over untrusted bytes: every read checks the length first.
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t len) : m_data(data), m_len(len) {}

  std::uint32_t uint(std::size_t width, const char* what) {
    need(width, what);
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < width; ++i) v = (v << 8) | m_data[m_pos++];
    return v;
  }
  Bytes bytes(std::size_t n, const char* what) {
    need(n, what);
    Bytes out(m_data + m_pos, m_data + m_pos + n);
    m_pos += n;
    return out;
  }
  std::size_t pos() const { return m_pos; }
  bool at_end() const { return m_pos == m_len; }

 private:
  void need(std::size_t n, const char* what) {
    if (m_len - m_pos < n) bad(std::string("truncated in ") + what);
  }
  const std::uint8_t* m_data;
  std::size_t m_len;
  std::size_t m_pos = 0;
};

std::string text_field(Reader& r, std::size_t width, std::size_t max, const char* what) {
  const std::size_t n = r.uint(width, what);
  if (n == 0 || n > max) bad(std::string(what) + " length out of range");
  const Bytes b = r.bytes(n, what);
  for (auto c : b)
    if (c < 0x21 || c > 0x7e) bad(std::string(what) + " holds a non-printable byte");
  return std::string(b.begin(), b.end());
}

void put_text(Bytes& out, const std::string& s, std::size_t width, std::size_t max, const char* what) {
  if (s.empty() || s.size() > max) bad(std::string(what) + " length out of range");
  if (width == 2) put_u16(out, static_cast<std::uint16_t>(s.size()));
  else out.push_back(static_cast<std::uint8_t>(s.size()));
  out.insert(out.end(), s.begin(), s.end());
}

void put_bytes32(Bytes& out, const Bytes& b) {
  put_u32(out, static_cast<std::uint32_t>(b.size()));
  out.insert(out.end(), b.begin(), b.end());
}

}  // namespace

Bytes header_bytes(const Header& h) {
  Bytes out(std::begin(kMagic), std::end(kMagic));
  out.push_back(kVersion);
  put_text(out, h.transfer_id, 2, kMaxTransferIdSize, "transfer id");
  put_text(out, h.label, 1, kMaxLabelSize, "label");
  out.insert(out.end(), h.source.bytes().begin(), h.source.bytes().end());
  out.insert(out.end(), h.target.bytes().begin(), h.target.bytes().end());
  return out;
}

IdentitySigner botan_identity_signer(const Botan::Private_Key& identity_key, Botan::RandomNumberGenerator& rng) {
  auto signer = std::make_shared<Botan::PK_Signer>(identity_key, rng, kEmsa, Botan::DER_SEQUENCE);
  return [signer, &rng](const Bytes& message) { return signer->sign_message(message, rng); };
}

Bytes build(const Header& header, const Bytes& target_transport_public_key, const SecureBytes& key,
            const std::vector<Bytes>& chain_der, const IdentitySigner& sign) {
  if (chain_der.empty() || chain_der.size() > kMaxCertificates) bad("1 to 4 certificates");
  const Bytes aad = header_bytes(header);
  const Bytes info(kHpkeInfo, kHpkeInfo + std::char_traits<char>::length(kHpkeInfo));
  Bytes out = aad;
  put_bytes32(out, hpke::seal(target_transport_public_key, info, aad, key));
  put_u16(out, static_cast<std::uint16_t>(chain_der.size()));
  for (const auto& der : chain_der) put_bytes32(out, der);
  const Bytes sig = sign(out);
  if (sig.empty() || sig.size() > kMaxSignatureSize) bad("signature size out of range");
  put_u16(out, static_cast<std::uint16_t>(sig.size()));
  out.insert(out.end(), sig.begin(), sig.end());
  if (out.size() > kMaxSize) bad("larger than 16 KiB");
  return out;
}

Envelope parse(const std::uint8_t* data, std::size_t len) {
  if (len > kMaxSize) bad("larger than 16 KiB");
  Reader r(data, len);
  if (r.bytes(4, "magic") != Bytes(std::begin(kMagic), std::end(kMagic))) bad("not a KLKE envelope");
  if (r.uint(1, "version") != kVersion) bad("unsupported version");
  Envelope e;
  e.header.transfer_id = text_field(r, 2, kMaxTransferIdSize, "transfer id");
  e.header.label = text_field(r, 1, kMaxLabelSize, "label");
  const Bytes source = r.bytes(kChipIdSize, "source chip");
  const Bytes target = r.bytes(kChipIdSize, "target chip");
  e.header.source = ChipId::from_bytes(source.data(), source.size());
  e.header.target = ChipId::from_bytes(target.data(), target.size());
  const std::size_t sealed_len = r.uint(4, "sealed length");
  if (sealed_len < hpke::kEncSize + hpke::kTagSize || sealed_len > kMaxSize) bad("sealed length out of range");
  e.sealed = r.bytes(sealed_len, "sealed");
  const std::size_t count = r.uint(2, "certificate count");
  if (count == 0 || count > kMaxCertificates) bad("1 to 4 certificates");
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t n = r.uint(4, "certificate length");
    if (n == 0 || n > kMaxSize) bad("certificate length out of range");
    e.certificates.push_back(r.bytes(n, "certificate"));
  }
  e.signed_part.assign(data, data + r.pos());
  const std::size_t sig_len = r.uint(2, "signature length");
  if (sig_len == 0 || sig_len > kMaxSignatureSize) bad("signature length out of range");
  e.signature = r.bytes(sig_len, "signature");
  if (!r.at_end()) bad("bytes after the signature");
  return e;
}

void verify_source(const Envelope& envelope, const std::vector<Botan::X509_Certificate>& anchors) {
  std::vector<Botan::X509_Certificate> chain;
  for (const auto& der : envelope.certificates) {
    try {
      chain.emplace_back(der);
    } catch (const std::exception&) {
      throw FormatError(ErrorCode::BadCertificate, "KLKE: a source certificate does not parse");
    }
  }
  verify_chain(chain[0], {chain.begin() + 1, chain.end()}, anchors);
  if (read_identity(chain[0]).chip_id != envelope.header.source)
    throw CryptoError(ErrorCode::Crypto, "KLKE: the signing certificate names another chip than the source");
  std::unique_ptr<Botan::Public_Key> key(chain[0].subject_public_key());
  if (key->algo_name() != "ECDSA") throw CryptoError(ErrorCode::Crypto, "KLKE: the source key is not ECDSA");
  Botan::PK_Verifier verifier(*key, kEmsa, Botan::DER_SEQUENCE);
  if (!verifier.verify_message(envelope.signed_part, envelope.signature))
    throw CryptoError(ErrorCode::Crypto, "KLKE: the source signature does not verify");
}

SecureBytes verify_and_open(const Envelope& envelope, const Header& expected,
                            const std::vector<Botan::X509_Certificate>& anchors,
                            const SecureBytes& transport_secret_key) {
  if (!(envelope.header == expected)) throw CryptoError(ErrorCode::Crypto, "KLKE: envelope for another transfer");
  verify_source(envelope, anchors);
  const Bytes info(kHpkeInfo, kHpkeInfo + std::char_traits<char>::length(kHpkeInfo));
  return hpke::open(transport_secret_key, info, header_bytes(envelope.header), envelope.sealed);
}

}  // namespace keyline::core::kps_envelope
