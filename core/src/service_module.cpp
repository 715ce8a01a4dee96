#include "keyline/core/service_module.h"

#include <botan/data_src.h>
#include <botan/ecdsa.h>
#include <botan/hash.h>
#include <botan/pk_keys.h>
#include <botan/pkcs8.h>
#include <botan/pubkey.h>
#include <botan/x509path.h>

#include <algorithm>
#include <chrono>
#include <memory>

#include "keyline/core/error.h"

namespace keyline::core::service {
namespace {

const Bytes kMagic = {'K', 'L', 'M', 0x01};
const Botan::OID kOidCodeSigning("1.3.6.1.5.5.7.3.3");  // RFC 5280 section 4.2.1.12 id-kp-codeSigning
constexpr const char* kEmsa = "EMSA1(SHA-256)";

[[noreturn]] void bad(const std::string& why) {
  throw FormatError(ErrorCode::BadServiceModule, "module: " + why);
}
[[noreturn]] void untrusted(const std::string& why) {
  throw Error(ErrorCode::ModuleNotTrusted, "module not trusted: " + why);
}

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}
void check_fields(const std::string& name, const Bytes& body) {
  if (name.empty() || name.size() > kMaxModuleName) bad("name length out of range");
  if (!std::all_of(name.begin(), name.end(), name_char)) bad("name holds a character outside [a-z0-9._-]");
  if (body.size() > kMaxModuleBody) bad("body longer than " + std::to_string(kMaxModuleBody) + " bytes");
}

// A cursor over untrusted bytes: every read checks the length first.
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t len) : m_data(data), m_len(len) {}
  const std::uint8_t* take(std::size_t n, const char* what) {
    if (m_len - m_pos < n) bad(std::string("truncated in the ") + what);
    const auto* p = m_data + m_pos;
    m_pos += n;
    return p;
  }
  std::uint32_t u(std::size_t n, const char* what) {
    const auto* p = take(n, what);
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v = (v << 8) | p[i];
    return v;
  }
  Bytes bytes(std::size_t n, const char* what) {
    const auto* p = take(n, what);
    return Bytes(p, p + n);
  }
  bool done() const { return m_pos == m_len; }

 private:
  const std::uint8_t* m_data;
  std::size_t m_len;
  std::size_t m_pos = 0;
};

void check_certificate(const Botan::X509_Certificate& cert, const Botan::X509_Certificate& root) {
  Botan::Certificate_Store_In_Memory store;
  store.add_certificate(root);
  const Botan::Path_Validation_Restrictions restrictions(false, 110);
  const auto result =
      Botan::x509_path_validate(std::vector<Botan::X509_Certificate>{cert}, restrictions, store, "",
                                Botan::Usage_Type::UNSPECIFIED, std::chrono::system_clock::now());
  if (!result.successful_validation())
    untrusted("the signer's certificate does not chain to the root (" + result.result_string() + ")");
  if (cert.is_CA_cert()) untrusted("the signer's certificate is a CA");
  if (cert.extended_key_usage() != std::vector<Botan::OID>{kOidCodeSigning})
    untrusted("the signer's certificate does not carry extendedKeyUsage exactly codeSigning");
}

}  // namespace

Bytes module_signed_part(const std::string& name, std::uint32_t version, const Bytes& body) {
  check_fields(name, body);
  Bytes out = kMagic;
  out.push_back(static_cast<std::uint8_t>(name.size()));
  out.insert(out.end(), name.begin(), name.end());
  put_u32(out, version);
  put_u32(out, static_cast<std::uint32_t>(body.size()));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

Bytes module_digest(const std::string& name, std::uint32_t version, const Bytes& body) {
  const auto part = module_signed_part(name, version, body);
  const auto h = Botan::HashFunction::create_or_throw("SHA-256")->process(part);
  return Bytes(h.begin(), h.end());
}

Bytes encode_module(const Module& m) {
  if (m.signature.size() != kModuleSignatureLen) bad("signature is not 64 bytes");
  if (m.certificate.empty() || m.certificate.size() > kMaxModuleCertificate)
    bad("certificate length out of range");
  Bytes out = module_signed_part(m.name, m.version, m.body);
  out.insert(out.end(), m.signature.begin(), m.signature.end());
  put_u16(out, static_cast<std::uint16_t>(m.certificate.size()));
  out.insert(out.end(), m.certificate.begin(), m.certificate.end());
  return out;
}

Module parse_module(const std::uint8_t* data, std::size_t len) {
  Reader r(data, len);
  if (!std::equal(kMagic.begin(), kMagic.end(), r.take(kMagic.size(), "magic"))) bad("wrong magic or format");
  Module m;
  const auto name_len = r.u(1, "name length");
  const auto* name = r.take(name_len, "name");
  m.name.assign(name, name + name_len);
  m.version = r.u(4, "version");
  const auto body_len = r.u(4, "body length");
  if (body_len > kMaxModuleBody) bad("body longer than " + std::to_string(kMaxModuleBody) + " bytes");
  m.body = r.bytes(body_len, "body");
  check_fields(m.name, m.body);
  m.signature = r.bytes(kModuleSignatureLen, "signature");
  const auto cert_len = r.u(2, "certificate length");
  if (cert_len == 0 || cert_len > kMaxModuleCertificate) bad("certificate length out of range");
  m.certificate = r.bytes(cert_len, "certificate");
  if (!r.done()) bad("bytes after the certificate");
  return m;
}

void verify_module(const Module& m, const Botan::X509_Certificate& root) {
  std::unique_ptr<Botan::X509_Certificate> cert;
  try {
    cert = std::make_unique<Botan::X509_Certificate>(m.certificate);
  } catch (const std::exception&) {
    untrusted("the signer's certificate does not parse");
  }
  check_certificate(*cert, root);
  std::unique_ptr<Botan::Public_Key> key;
  try {
    key = cert->load_subject_public_key();
  } catch (const std::exception&) {
    untrusted("the signer's key does not load");
  }
  const auto* ec = dynamic_cast<const Botan::ECDSA_PublicKey*>(key.get());
  if (ec == nullptr || ec->domain().get_curve_oid() != Botan::OID::from_string("secp256r1"))
    untrusted("the signer's key is not ECDSA P-256");
  Botan::PK_Verifier verifier(*key, kEmsa, Botan::IEEE_1363);
  if (!verifier.verify_message(module_signed_part(m.name, m.version, m.body), m.signature))
    untrusted("the signature does not verify");
}

Module sign_module(const std::string& name, std::uint32_t version, const Bytes& body,
                   const SecureBytes& pkcs8, const Bytes& certificate_der,
                   Botan::RandomNumberGenerator& rng) {
  Botan::DataSource_Memory src(pkcs8);
  const auto key = Botan::PKCS8::load_key(src);
  Botan::PK_Signer signer(*key, rng, kEmsa, Botan::IEEE_1363);
  Module m{name, version, body, {}, certificate_der};
  const auto sig = signer.sign_message(module_signed_part(name, version, body), rng);
  m.signature.assign(sig.begin(), sig.end());
  return m;
}

namespace {

void put_tlv(Bytes& out, std::uint8_t tag, const Bytes& value) {
  out.push_back(tag);
  if (value.size() < 0x80) {
    out.push_back(static_cast<std::uint8_t>(value.size()));
  } else if (value.size() <= 0xFF) {
    out.insert(out.end(), {0x81, static_cast<std::uint8_t>(value.size())});
  } else {
    out.push_back(0x82);
    put_u16(out, static_cast<std::uint16_t>(value.size()));
  }
  out.insert(out.end(), value.begin(), value.end());
}

// One TLV of the status answer: its tag and value, advancing `r`.
std::pair<std::uint8_t, Bytes> get_tlv(Reader& r) {
  const auto tag = static_cast<std::uint8_t>(r.u(1, "status tag"));
  std::uint32_t len = r.u(1, "status length");
  if (len == 0x81) {
    len = r.u(1, "status length");
    if (len < 0x80) bad("status length not in its shortest form");
  } else if (len == 0x82) {
    len = r.u(2, "status length");
    if (len <= 0xFF) bad("status length not in its shortest form");
  } else if (len >= 0x80) {
    bad("status length form not supported");
  }
  return {tag, r.bytes(len, "status value")};
}

Bytes expect(Reader& r, std::uint8_t tag) {
  auto [t, v] = get_tlv(r);
  if (t != tag) bad("status: unexpected tag");
  return v;
}

}  // namespace

Bytes encode_device_status(const DeviceStatus& s) {
  Bytes out;
  put_tlv(out, 0xC0, Bytes(s.imei.begin(), s.imei.end()));
  put_tlv(out, 0xC1, {s.lifecycle});
  put_tlv(out, 0xC2, {s.kvn});
  for (const auto& m : s.modules) {
    Bytes inner, version;
    put_tlv(inner, 0xC4, Bytes(m.name.begin(), m.name.end()));
    put_u32(version, m.version);
    put_tlv(inner, 0xC5, version);
    put_tlv(out, 0xE1, inner);
  }
  for (const auto& i : s.items) {
    Bytes v;
    put_u16(v, i.tag);
    v.insert(v.end(), i.sha256.begin(), i.sha256.end());
    Bytes inner;
    put_tlv(inner, 0xC6, v);
    put_tlv(out, 0xE2, inner);
  }
  return out;
}

DeviceStatus parse_device_status(const std::uint8_t* data, std::size_t len) {
  Reader r(data, len);
  DeviceStatus s;
  const Bytes imei = expect(r, 0xC0);
  if (imei.size() != 15) bad("status: IMEI is not 15 digits");
  s.imei.assign(imei.begin(), imei.end());
  const Bytes lc = expect(r, 0xC1), kvn = expect(r, 0xC2);
  if (lc.size() != 1 || kvn.size() != 1) bad("status: lifecycle and KVN are one byte");
  s.lifecycle = lc[0];
  s.kvn = kvn[0];
  while (!r.done()) {
    auto [tag, value] = get_tlv(r);
    Reader in(value.data(), value.size());
    if (tag == 0xE1) {
      const Bytes name = expect(in, 0xC4), version = expect(in, 0xC5);
      if (name.empty() || name.size() > kMaxModuleName || version.size() != 4)
        bad("status: bad module entry");
      // One encoding per status: modules before items, each list strictly ascending (name, tag).
      if (!s.items.empty() ||
          (!s.modules.empty() && !(s.modules.back().name < std::string(name.begin(), name.end()))))
        bad("status: modules out of order");
      s.modules.push_back({std::string(name.begin(), name.end()),
                           (std::uint32_t{version[0]} << 24) | (std::uint32_t{version[1]} << 16) |
                               (std::uint32_t{version[2]} << 8) | version[3]});
    } else if (tag == 0xE2) {
      const Bytes v = expect(in, 0xC6);
      if (v.size() != 34) bad("status: bad item entry");
      if (!s.items.empty() && s.items.back().tag >= ((v[0] << 8) | v[1])) bad("status: items out of order");
      s.items.push_back({static_cast<std::uint16_t>((v[0] << 8) | v[1]), Bytes(v.begin() + 2, v.end())});
    } else {
      bad("status: unknown tag");
    }
    if (!in.done()) bad("status: bytes after an entry");
  }
  return s;
}

}  // namespace keyline::core::service
