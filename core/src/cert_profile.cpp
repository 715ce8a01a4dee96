#include "keyline/core/cert_profile.h"

#include <arpa/inet.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <mutex>
#include <fstream>
#include <set>
#include <sstream>

#include <botan/base64.h>
#include <botan/ber_dec.h>
#include <botan/der_enc.h>
#include <botan/ec_group.h>
#include <botan/ecc_key.h>
#include <botan/ecdsa.h>
#include <botan/pk_ops.h>
#include <botan/pubkey.h>
#include <botan/system_rng.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>

#include "keyline/core/error.h"

namespace keyline::core {

const char* const kDefaultHwType = "1.3.6.1.4.1.59999.1.1";
const char* const kNotAfter = "21991231235959Z";

namespace {

// RFC 4108 section 5: id-on-hardwareModuleName.
const Botan::OID& hmn_oid() {
  static const Botan::OID oid("1.3.6.1.5.5.7.8.4");
  return oid;
}
const Botan::OID kOidSan("2.5.29.17");
const Botan::OID kOidBasicConstraints("2.5.29.19");
const Botan::OID kOidKeyUsage("2.5.29.15");
const Botan::OID kOidSki("2.5.29.14");
const Botan::OID kOidAki("2.5.29.35");
const Botan::OID kOidP256("1.2.840.10045.3.1.7");

[[noreturn]] void bad_cert(const std::string& why) { throw FormatError(ErrorCode::BadCertificate, why); }
[[noreturn]] void lint_fail(const std::string& rule) {
  throw Error(ErrorCode::CertificateLint, "certificate profile lint: " + rule);
}

Botan::X509_Time not_after_time() { return Botan::X509_Time(kNotAfter, Botan::GENERALIZED_TIME); }

Botan::BigInt random_serial(Botan::RandomNumberGenerator& rng) {
  std::uint8_t b[16];
  rng.randomize(b, sizeof b);
  b[0] = static_cast<std::uint8_t>((b[0] & 0x7F) | 0x40);  // positive, 16 octets, never zero
  return Botan::BigInt(b, sizeof b);
}

// The DER of one certificate signed with SHA-256 by `signer_key`: the TBSCertificate exactly as
// Botan 2.19's X509_CA::make_cert encodes it (RFC 5280 section 4.1), without the parse into an
// X509_Certificate that make_cert ends with — the station only needs the bytes.
Bytes sign_cert_der(const Botan::Private_Key& signer_key, const Botan::BigInt& serial, const Botan::X509_DN& issuer,
                    const Botan::X509_DN& subject, const Botan::Public_Key& subject_key, const Botan::Extensions& ext,
                    const Botan::X509_Time& not_before, const Botan::X509_Time& not_after,
                    Botan::RandomNumberGenerator& rng) {
  Botan::AlgorithmIdentifier sig_algo;
  std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(signer_key, rng, "SHA-256", sig_algo));
  const std::size_t v3 = 2;  // version v3 is encoded as 2
  const auto tbs = Botan::DER_Encoder()
                       .start_cons(Botan::SEQUENCE)
                       .start_explicit(0)
                       .encode(v3)
                       .end_explicit()
                       .encode(serial)
                       .encode(sig_algo)
                       .encode(issuer)
                       .start_cons(Botan::SEQUENCE)
                       .encode(not_before)
                       .encode(not_after)
                       .end_cons()
                       .encode(subject)
                       .raw_bytes(subject_key.subject_public_key())
                       .start_explicit(3)
                       .start_cons(Botan::SEQUENCE)
                       .encode(ext)
                       .end_cons()
                       .end_explicit()
                       .end_cons()
                       .get_contents();
  return Botan::X509_Object::make_signed(signer.get(), rng, sig_algo, tbs);
}

// The same, parsed (in-process or token key alike). One encoder for both: the lint draft is the very
// TBS the Device CA key then signs.
Botan::X509_Certificate sign_cert(const Botan::Private_Key& signer_key, const Botan::BigInt& serial,
                                  const Botan::X509_DN& issuer, const Botan::X509_DN& subject,
                                  const Botan::Public_Key& subject_key, const Botan::Extensions& ext,
                                  const Botan::X509_Time& not_before, const Botan::X509_Time& not_after,
                                  Botan::RandomNumberGenerator& rng) {
  return Botan::X509_Certificate(
      sign_cert_der(signer_key, serial, issuer, subject, subject_key, ext, not_before, not_after, rng));
}

// The to-be-linted copy of each device certificate is "signed" by this key: lint reads the TBS fields
// and the signature algorithm, never the signature, so its signature is a placeholder (r = s = 0)
// instead of an ECDSA signature that cost as much as the real one and was thrown away. The key is
// an ECDSA P-256 key, so the draft names ecdsa-with-SHA256 exactly as the CA-signed certificate does.
class DraftKey final : public Botan::ECDSA_PublicKey, public Botan::Private_Key {
 public:
  explicit DraftKey(const Botan::ECDSA_PrivateKey& k)
      : Botan::EC_PublicKey(k.domain(), k.public_point()), Botan::ECDSA_PublicKey(k.domain(), k.public_point()) {}

  Botan::secure_vector<std::uint8_t> private_key_bits() const override {
    throw Error(ErrorCode::Crypto, "the lint draft key has no private half");
  }
  std::unique_ptr<Botan::PK_Ops::Signature> create_signature_op(Botan::RandomNumberGenerator&, const std::string&,
                                                                const std::string&) const override {
    return std::make_unique<Placeholder>(domain().get_order().bytes());
  }

 private:
  class Placeholder final : public Botan::PK_Ops::Signature {
   public:
    explicit Placeholder(std::size_t order_bytes) : m_order_bytes(order_bytes) {}
    void update(const std::uint8_t[], std::size_t) override {}
    Botan::secure_vector<std::uint8_t> sign(Botan::RandomNumberGenerator&) override {
      return Botan::secure_vector<std::uint8_t>(2 * m_order_bytes, 0);
    }
    std::size_t signature_length() const override { return 2 * m_order_bytes; }

   private:
    std::size_t m_order_bytes;
  };
};

const Botan::Private_Key& lint_key() {
  static const DraftKey key(Botan::ECDSA_PrivateKey(Botan::system_rng(), Botan::EC_Group("secp256r1")));
  return key;
}

Botan::X509_Time now_time() {
  // One minute back, so a verifier whose clock is slightly behind still sees a valid notBefore.
  return Botan::X509_Time(std::chrono::system_clock::now() - std::chrono::minutes(1));
}

std::vector<std::uint8_t> key_id(const Botan::Public_Key& key) {
  // RFC 5280 section 4.2.1.2 method (1) uses SHA-1 of the subjectPublicKey BIT STRING; Botan
  // hashes the whole SubjectPublicKeyInfo, which is as unique; truncated SHA-256 keeps SHA-1 out.
  return Botan::Cert_Extension::Subject_Key_ID(key.subject_public_key(), "SHA-256").get_key_id();
}

Botan::X509_DN device_subject(const Imei& imei) {
  Botan::X509_DN dn;
  dn.add_attribute("X520.SerialNumber", imei.str());
  return dn;
}

Botan::X509_DN ca_subject(const std::string& cn, const std::string& org) {
  Botan::X509_DN dn;
  if (!org.empty()) dn.add_attribute("X520.Organization", org);
  dn.add_attribute("X520.CommonName", cn);
  return dn;
}

Bytes issue_device(const Botan::X509_Certificate& ca_cert, const Botan::Private_Key& ca_key,
                                     const Botan::Public_Key& key, const Imei& imei, const ChipId& chip_id,
                                     const std::string& hw_type, Botan::Key_Constraints usage, CertKind kind,
                                     Botan::RandomNumberGenerator& rng) {
  if (!ca_cert.is_CA_cert()) lint_fail("issuer certificate is not a CA");
  Botan::OID hw;
  try {
    hw = Botan::OID(hw_type);
  } catch (const Botan::Exception&) {
    lint_fail("hwType '" + hw_type + "' is not an OID");
  }
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
  ext.add(new Botan::Cert_Extension::Key_Usage(usage), true);
  ext.add(new Botan::Cert_Extension::Subject_Key_ID(key_id(key)), false);
  ext.add(new Botan::Cert_Extension::Authority_Key_ID(ca_cert.subject_key_id()), false);
  ext.add(new HardwareModuleNameExtension(hw, chip_id), false);
  const Botan::BigInt serial = random_serial(rng);
  const auto nb = now_time();
  const auto na = not_after_time();
  const Botan::X509_DN subject = device_subject(imei);
  // Boulder-style pre-issuance lint, on a draft with the same TBS contents (placeholder signature).
  const auto draft = sign_cert(lint_key(), serial, ca_cert.subject_dn(), subject, key, ext, nb, na, rng);
  lint_certificate(draft, kind);
  return sign_cert_der(ca_key, serial, ca_cert.subject_dn(), subject, key, ext, nb, na, rng);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// subjectAltName with one otherName HardwareModuleName (RFC 5280 section 4.2.1.6, RFC 4108 section 5):
//   GeneralNames ::= SEQUENCE SIZE (1..MAX) OF GeneralName
//   GeneralName  ::= CHOICE { otherName [0] IMPLICIT OtherName, ... }   (implicit tagging module)
//   OtherName    ::= SEQUENCE { type-id OBJECT IDENTIFIER, value [0] EXPLICIT ANY DEFINED BY type-id }
//   HardwareModuleName ::= SEQUENCE { hwType OBJECT IDENTIFIER, hwSerialNum OCTET STRING }

std::vector<std::uint8_t> HardwareModuleNameExtension::encode_inner() const {
  std::vector<std::uint8_t> out;
  Botan::DER_Encoder(out)
      .start_cons(Botan::SEQUENCE)
      .start_cons(Botan::ASN1_Tag(0), Botan::CONTEXT_SPECIFIC)
      .encode(hmn_oid())
      .start_cons(Botan::ASN1_Tag(0), Botan::CONTEXT_SPECIFIC)
      .start_cons(Botan::SEQUENCE)
      .encode(m_hw_type)
      .encode(m_serial, Botan::OCTET_STRING)
      .end_cons()
      .end_cons()
      .end_cons()
      .end_cons();
  return out;
}

void HardwareModuleNameExtension::decode_inner(const std::vector<std::uint8_t>& in) {
  try {
    Botan::BER_Decoder outer(in);
    Botan::BER_Decoder names = outer.start_cons(Botan::SEQUENCE);
    const Botan::BER_Object gn = names.get_next_object();
    names.verify_end();
    outer.verify_end();
    if (!gn.is_a(0, Botan::ASN1_Tag(Botan::CONTEXT_SPECIFIC | Botan::CONSTRUCTED)))
      bad_cert("subjectAltName does not hold an otherName");
    Botan::BER_Decoder other(gn);
    Botan::OID type_id;
    other.decode(type_id);
    if (type_id != hmn_oid()) bad_cert("subjectAltName otherName is not a HardwareModuleName");
    const Botan::BER_Object value = other.get_next_object();
    other.verify_end();
    if (!value.is_a(0, Botan::ASN1_Tag(Botan::CONTEXT_SPECIFIC | Botan::CONSTRUCTED)))
      bad_cert("otherName value is not [0] EXPLICIT");
    Botan::BER_Decoder explicit_value(value);
    Botan::BER_Decoder hmn = explicit_value.start_cons(Botan::SEQUENCE);
    Botan::OID hw_type;
    std::vector<std::uint8_t> serial;
    hmn.decode(hw_type).decode(serial, Botan::OCTET_STRING);
    hmn.verify_end();
    explicit_value.verify_end();
    // Botan 2 decodes OID arcs it refuses to encode (fuzz_hw_module_name found a first arc above 2):
    // such an hwType is not an OID (X.690 section 8.19), so the certificate is refused, not half-read.
    std::vector<std::uint8_t> reencoded;
    Botan::DER_Encoder(reencoded).encode(hw_type);
    m_hw_type = hw_type;
    m_serial.assign(serial.begin(), serial.end());
  } catch (const Botan::Exception&) {
    bad_cert("subjectAltName HardwareModuleName does not decode");
  }
}

HardwareModuleNameExtension HardwareModuleNameExtension::from_der(const std::vector<std::uint8_t>& extn_value) {
  HardwareModuleNameExtension e;
  e.decode_inner(extn_value);
  return e;
}

// ---------------------------------------------------------------------------------------------

IdentityFacts read_identity(const Botan::X509_Certificate& cert) {
  const auto serials = cert.subject_dn().get_attribute("X520.SerialNumber");
  if (serials.size() != 1) bad_cert("subject must hold exactly one serialNumber");
  Imei imei = [&] {
    try {
      return Imei::parse(serials.front());
    } catch (const Error&) {
      bad_cert("subject serialNumber is not a valid IMEI");
    }
  }();
  if (!cert.v3_extensions().extension_set(kOidSan)) bad_cert("no subjectAltName");
  const auto ext = HardwareModuleNameExtension::from_der(cert.v3_extensions().get_extension_bits(kOidSan));
  if (ext.hw_serial().size() != kChipIdSize) bad_cert("hwSerialNum is not a 10-byte chip ID");
  return IdentityFacts{std::move(imei), ChipId::from_bytes(ext.hw_serial().data(), ext.hw_serial().size()),
                       ext.hw_type().to_string()};
}

void lint_certificate(const Botan::X509_Certificate& cert, CertKind kind) {
  if (cert.x509_version() != 3) lint_fail("version must be v3");
  // Subject and SAN: IMEI Luhn and chip ID form.
  const auto serials = cert.subject_dn().get_attribute("X520.SerialNumber");
  if (serials.size() != 1) lint_fail("subject must hold exactly one serialNumber");
  if (!Imei::is_valid(serials.front())) lint_fail("subject serialNumber is not a valid IMEI (3GPP TS 23.003)");
  const auto& exts = cert.v3_extensions();
  if (!exts.extension_set(kOidSan)) lint_fail("subjectAltName HardwareModuleName missing");
  HardwareModuleNameExtension hmn;
  try {
    hmn = HardwareModuleNameExtension::from_der(exts.get_extension_bits(kOidSan));
  } catch (const Error& e) {
    lint_fail(std::string("subjectAltName: ") + e.what());
  }
  if (hmn.hw_serial().size() != kChipIdSize) lint_fail("hwSerialNum is not a 10-byte chip ID");
  // Extensions: exactly the profile's set, critical where RFC 5280 and the profile say so.
  const std::set<Botan::OID> allowed{kOidSan, kOidBasicConstraints, kOidKeyUsage, kOidSki, kOidAki};
  for (const auto& oid : exts.get_extension_oids())
    if (!allowed.count(oid)) lint_fail("unexpected extension " + oid.to_string());
  if (!exts.extension_set(kOidBasicConstraints) || !exts.critical_extension_set(kOidBasicConstraints))
    lint_fail("basicConstraints must be present and critical");
  // Botan's is_CA_cert() also wants keyCertSign, so read the cA flag itself.
  const auto* bc = exts.get_extension_object_as<Botan::Cert_Extension::Basic_Constraints>();
  if (!bc || bc->get_is_ca()) lint_fail("an end-entity certificate must have CA:false");
  if (!exts.extension_set(kOidKeyUsage) || !exts.critical_extension_set(kOidKeyUsage))
    lint_fail("keyUsage must be present and critical");
  const Botan::Key_Constraints want =
      kind == CertKind::Identity ? Botan::DIGITAL_SIGNATURE : Botan::KEY_AGREEMENT;
  if (cert.constraints() != want)
    lint_fail(kind == CertKind::Identity ? "keyUsage must be exactly digitalSignature"
                                         : "keyUsage must be exactly keyAgreement");
  if (!exts.extension_set(kOidSki) || cert.subject_key_id().empty()) lint_fail("subjectKeyIdentifier missing");
  if (!exts.extension_set(kOidAki) || cert.authority_key_id().empty()) lint_fail("authorityKeyIdentifier missing");
  // Key type.
  std::unique_ptr<Botan::Public_Key> key;
  try {
    key.reset(cert.subject_public_key());
  } catch (const Botan::Exception&) {
    lint_fail("subject public key does not decode");
  }
  if (kind == CertKind::Identity) {
    const auto* ec = dynamic_cast<const Botan::EC_PublicKey*>(key.get());
    if (!ec || key->algo_name() != "ECDSA" || ec->domain().get_curve_oid() != kOidP256)
      lint_fail("identity key must be ECDSA P-256");
  } else if (key->algo_name() != "Curve25519") {
    lint_fail("transport key must be X25519");
  }
  // Validity: no practical expiry, not issued in the future (a day of clock skew allowed).
  if (!(cert.not_after() == not_after_time())) lint_fail(std::string("notAfter must be ") + kNotAfter);
  const Botan::X509_Time tomorrow(std::chrono::system_clock::now() + std::chrono::hours(24));
  if (cert.not_before() > tomorrow) lint_fail("notBefore lies in the future");
  if (!(cert.signature_algorithm().get_oid() == Botan::OID::from_string("ECDSA/EMSA1(SHA-256)")))
    lint_fail("signature algorithm must be ecdsa-with-SHA256");
}

namespace {

using CertPair = std::pair<std::vector<std::uint8_t>, std::vector<std::uint8_t>>;  // subject DER, issuer DER

// CA signatures already verified, by exact DER, oldest dropped first. A line has one Device CA under
// one root; the bound only keeps odd input from growing it.
class VerifiedSignatures {
 public:
  bool contains(const CertPair& p) {
    std::lock_guard<std::mutex> g(m_mutex);
    return std::find(m_pairs.begin(), m_pairs.end(), p) != m_pairs.end();
  }
  void add(CertPair p) {
    std::lock_guard<std::mutex> g(m_mutex);
    if (std::find(m_pairs.begin(), m_pairs.end(), p) != m_pairs.end()) return;
    if (m_pairs.size() >= kMax) m_pairs.pop_front();
    m_pairs.push_back(std::move(p));
  }

 private:
  static constexpr std::size_t kMax = 32;
  std::mutex m_mutex;
  std::deque<CertPair> m_pairs;
};

VerifiedSignatures& verified_ca_signatures() {
  static VerifiedSignatures v;
  return v;
}

}  // namespace

void verify_chain(const Botan::X509_Certificate& leaf, const std::vector<Botan::X509_Certificate>& intermediates,
                  const std::vector<Botan::X509_Certificate>& trust_anchors) {
  // RFC 5280 section 6.1 path processing without the validity-period step (device certificates
  // never expire) and without revocation (the public DB is append-only; there is no CRL).
  auto issuer_ok = [](const Botan::X509_Certificate& issuer) {
    return issuer.is_CA_cert() && (issuer.constraints() & Botan::KEY_CERT_SIGN);
  };
  auto signed_by = [](const Botan::X509_Certificate& subject, const Botan::X509_Certificate& issuer) {
    if (!(subject.issuer_dn() == issuer.subject_dn())) return false;
    // The answer depends on nothing but the two DER encodings, so a remembered success stands. Only CA
    // certificates are remembered: there are a handful, while each leaf is checked once.
    const bool memo = subject.is_CA_cert();
    CertPair pair;
    if (memo) {
      pair = {subject.BER_encode(), issuer.BER_encode()};
      if (verified_ca_signatures().contains(pair)) return true;
    }
    bool ok = false;
    try {
      std::unique_ptr<Botan::Public_Key> k(issuer.subject_public_key());
      ok = subject.verify_signature(*k) == Botan::Certificate_Status_Code::VERIFIED;
    } catch (const Botan::Exception&) {
      return false;
    }
    if (ok && memo) verified_ca_signatures().add(std::move(pair));
    return ok;
  };
  // RFC 5280 section 4.2.1.9: pathLenConstraint counts the intermediate CA certificates that may
  // follow the issuer; `depth` is how many intermediates lie below the issuer being checked.
  const Botan::X509_Certificate* current = &leaf;
  std::vector<bool> used(intermediates.size(), false);
  for (std::size_t depth = 0; depth <= intermediates.size(); ++depth) {
    for (const auto& anchor : trust_anchors) {
      if (!signed_by(*current, anchor)) continue;
      if (!issuer_ok(anchor)) throw Error(ErrorCode::ChainInvalid, "trust anchor is not a CA with keyCertSign");
      if (anchor.path_limit() < depth)
        throw Error(ErrorCode::ChainInvalid, "path length constraint of the trust anchor exceeded");
      return;
    }
    bool advanced = false;
    for (std::size_t i = 0; i < intermediates.size() && !advanced; ++i) {
      if (used[i] || !signed_by(*current, intermediates[i])) continue;
      if (!issuer_ok(intermediates[i]))
        throw Error(ErrorCode::ChainInvalid, "issuer '" + intermediates[i].subject_dn().to_string() +
                                                 "' is not a CA with keyCertSign");
      if (intermediates[i].path_limit() < depth) throw Error(ErrorCode::ChainInvalid, "path length constraint exceeded");
      used[i] = true;
      current = &intermediates[i];
      advanced = true;
    }
    if (!advanced) break;
  }
  throw Error(ErrorCode::ChainInvalid, "certificate does not chain to a trust anchor");
}

// ---------------------------------------------------------------------------------------------

Botan::X509_Certificate make_root_certificate(const Botan::Private_Key& key, const std::string& common_name,
                                              const std::string& organization, Botan::RandomNumberGenerator& rng) {
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Basic_Constraints(true, Botan::Cert_Extension::NO_CERT_PATH_LIMIT), true);
  ext.add(new Botan::Cert_Extension::Key_Usage(Botan::Key_Constraints(Botan::KEY_CERT_SIGN | Botan::CRL_SIGN)), true);
  ext.add(new Botan::Cert_Extension::Subject_Key_ID(key_id(key)), false);
  const auto dn = ca_subject(common_name, organization);
  return sign_cert(key, random_serial(rng), dn, dn, key, ext, now_time(), not_after_time(), rng);
}

Botan::X509_Certificate make_ca_certificate(const Botan::X509_Certificate& issuer_cert,
                                            const Botan::Private_Key& issuer_key, const Botan::Public_Key& ca_key,
                                            const std::string& common_name, const std::string& organization,
                                            std::size_t path_limit, Botan::RandomNumberGenerator& rng) {
  if (!issuer_cert.is_CA_cert()) throw Error(ErrorCode::CertificateLint, "issuer certificate is not a CA");
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Basic_Constraints(true, path_limit), true);
  ext.add(new Botan::Cert_Extension::Key_Usage(Botan::Key_Constraints(Botan::KEY_CERT_SIGN | Botan::CRL_SIGN)), true);
  ext.add(new Botan::Cert_Extension::Subject_Key_ID(key_id(ca_key)), false);
  ext.add(new Botan::Cert_Extension::Authority_Key_ID(issuer_cert.subject_key_id()), false);
  return sign_cert(issuer_key, random_serial(rng), issuer_cert.subject_dn(), ca_subject(common_name, organization),
                   ca_key, ext, now_time(), not_after_time(), rng);
}

Bytes issue_identity_certificate_der(const Botan::X509_Certificate& ca_cert, const Botan::Private_Key& ca_key,
                                     const Botan::Public_Key& device_key, const Imei& imei, const ChipId& chip_id,
                                     const std::string& hw_type, Botan::RandomNumberGenerator& rng) {
  return issue_device(ca_cert, ca_key, device_key, imei, chip_id, hw_type, Botan::DIGITAL_SIGNATURE,
                      CertKind::Identity, rng);
}

Bytes issue_transport_certificate_der(const Botan::X509_Certificate& ca_cert, const Botan::Private_Key& ca_key,
                                      const Botan::Public_Key& x25519_key, const Imei& imei, const ChipId& chip_id,
                                      const std::string& hw_type, Botan::RandomNumberGenerator& rng) {
  return issue_device(ca_cert, ca_key, x25519_key, imei, chip_id, hw_type, Botan::KEY_AGREEMENT,
                      CertKind::Transport, rng);
}

Botan::X509_Certificate issue_identity_certificate(const Botan::X509_Certificate& ca_cert,
                                                   const Botan::Private_Key& ca_key,
                                                   const Botan::Public_Key& device_key, const Imei& imei,
                                                   const ChipId& chip_id, const std::string& hw_type,
                                                   Botan::RandomNumberGenerator& rng) {
  return Botan::X509_Certificate(
      issue_identity_certificate_der(ca_cert, ca_key, device_key, imei, chip_id, hw_type, rng));
}

Botan::X509_Certificate issue_transport_certificate(const Botan::X509_Certificate& ca_cert,
                                                    const Botan::Private_Key& ca_key,
                                                    const Botan::Public_Key& x25519_key, const Imei& imei,
                                                    const ChipId& chip_id, const std::string& hw_type,
                                                    Botan::RandomNumberGenerator& rng) {
  return Botan::X509_Certificate(
      issue_transport_certificate_der(ca_cert, ca_key, x25519_key, imei, chip_id, hw_type, rng));
}

// --- TLS certificates: the station profile and server certificates -----------------------------

const char* const kStationPolicy = "1.3.6.1.4.1.59999.2.1";
const char* const kStationUnit = "keyline station";

bool is_valid_station_id(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
           c == '.';
  });
}

bool is_ipv4_literal(const std::string& name) {
  in_addr a{};
  return !name.empty() && ::inet_pton(AF_INET, name.c_str(), &a) == 1;
}

bool is_valid_dns_name(const std::string& name) {
  if (name.empty() || name.size() > 253) return false;
  if (name.find_first_not_of("0123456789.") == std::string::npos) return false;  // looks like an address
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = name.find('.', start);
    const std::string label = name.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (char c : label)
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-')) return false;
    if (dot == std::string::npos) return true;
    start = dot + 1;
  }
}

namespace {

const Botan::OID kOidEku("2.5.29.37");
const Botan::OID kOidPolicies("2.5.29.32");
const Botan::OID kOidClientAuth("1.3.6.1.5.5.7.3.2");  // RFC 5280 section 4.2.1.12 id-kp-clientAuth
const Botan::OID kOidServerAuth("1.3.6.1.5.5.7.3.1");  // id-kp-serverAuth

// Rules both TLS profiles share; returns the first one `cert` breaks, or an empty string.
std::string tls_common_violation(const Botan::X509_Certificate& cert, const std::set<Botan::OID>& allowed) {
  if (cert.x509_version() != 3) return "version must be v3";
  const auto& exts = cert.v3_extensions();
  for (const auto& oid : exts.get_extension_oids())
    if (!allowed.count(oid)) return "unexpected extension " + oid.to_string();
  if (!exts.extension_set(kOidBasicConstraints) || !exts.critical_extension_set(kOidBasicConstraints))
    return "basicConstraints must be present and critical";
  const auto* bc = exts.get_extension_object_as<Botan::Cert_Extension::Basic_Constraints>();
  if (!bc || bc->get_is_ca()) return "an end-entity certificate must have CA:false";
  if (!exts.extension_set(kOidKeyUsage) || !exts.critical_extension_set(kOidKeyUsage))
    return "keyUsage must be present and critical";
  if (cert.constraints() != Botan::DIGITAL_SIGNATURE) return "keyUsage must be exactly digitalSignature";
  if (!exts.extension_set(kOidSki) || cert.subject_key_id().empty()) return "subjectKeyIdentifier missing";
  if (!exts.extension_set(kOidAki) || cert.authority_key_id().empty()) return "authorityKeyIdentifier missing";
  try {
    std::unique_ptr<Botan::Public_Key> key(cert.subject_public_key());
    const auto* ec = dynamic_cast<const Botan::EC_PublicKey*>(key.get());
    if (!ec || key->algo_name() != "ECDSA" || ec->domain().get_curve_oid() != kOidP256)
      return "key must be ECDSA P-256";
  } catch (const Botan::Exception&) {
    return "subject public key does not decode";
  }
  if (!(cert.signature_algorithm().get_oid() == Botan::OID::from_string("ECDSA/EMSA1(SHA-256)")))
    return "signature algorithm must be ecdsa-with-SHA256";
  return {};
}

// The station profile (cert_profile.h, read_station_id); `station_id` receives the CN when it passes.
std::string station_violation(const Botan::X509_Certificate& cert, std::string& station_id) {
  static const std::set<Botan::OID> allowed{kOidBasicConstraints, kOidKeyUsage, kOidSki, kOidAki,
                                            kOidEku,              kOidPolicies, kOidSan};
  if (auto v = tls_common_violation(cert, allowed); !v.empty()) return v;
  // RFC 5280 section 4.2.1.12: a certificate that also names serverAuth could serve as a server's; the
  // profile wants clientAuth and nothing else.
  if (cert.extended_key_usage() != std::vector<Botan::OID>{kOidClientAuth})
    return "extendedKeyUsage must be exactly clientAuth";
  if (cert.certificate_policy_oids() != std::vector<Botan::OID>{Botan::OID(kStationPolicy)})
    return "certificatePolicies must be exactly the keyline station policy";
  const auto units = cert.subject_dn().get_attribute("X520.OrganizationalUnit");
  if (units.size() != 1 || units.front() != kStationUnit) return "subject OU must be the station unit";
  const auto cns = cert.subject_dn().get_attribute("X520.CommonName");
  if (cns.size() != 1 || !is_valid_station_id(cns.front())) return "subject CN must be one well-formed station id";
  station_id = cns.front();
  return {};
}

std::string server_violation(const Botan::X509_Certificate& cert) {
  static const std::set<Botan::OID> allowed{kOidBasicConstraints, kOidKeyUsage, kOidSki, kOidAki, kOidEku, kOidSan};
  if (auto v = tls_common_violation(cert, allowed); !v.empty()) return v;
  if (cert.extended_key_usage() != std::vector<Botan::OID>{kOidServerAuth})
    return "extendedKeyUsage must be exactly serverAuth";
  if (!cert.subject_dn().get_attribute("X520.OrganizationalUnit").empty())
    return "a server certificate must not carry a subject OU";
  if (cert.subject_dn().get_attribute("X520.CommonName").size() != 1) return "subject must hold one CN";
  const auto& alt = cert.subject_alt_name();
  const auto dns = alt.get_attribute("DNS");
  const auto ips = alt.get_attribute("IP");
  if (dns.empty() && ips.empty()) return "subjectAltName must name the server";
  if (alt.get_attributes().size() != dns.size() + ips.size()) return "subjectAltName holds only DNS and IP names";
  for (const auto& d : dns)
    if (!is_valid_dns_name(d)) return "subjectAltName dNSName is not a host name";
  return {};
}

std::string validity_violation(const Botan::X509_Certificate& cert) {
  const Botan::X509_Time tomorrow(std::chrono::system_clock::now() + std::chrono::hours(24));
  if (cert.not_before() > tomorrow) return "notBefore lies in the future";
  if (!(cert.not_before() < cert.not_after())) return "notAfter must follow notBefore";
  return {};
}

}  // namespace

std::string read_station_id(const Botan::X509_Certificate& cert) {
  std::string id;
  if (const auto v = station_violation(cert, id); !v.empty()) bad_cert("station profile: " + v);
  return id;
}

void lint_station_certificate(const Botan::X509_Certificate& cert) {
  std::string id;
  auto v = station_violation(cert, id);
  if (v.empty()) v = validity_violation(cert);
  if (!v.empty()) lint_fail("station profile: " + v);
}

void lint_server_certificate(const Botan::X509_Certificate& cert) {
  auto v = server_violation(cert);
  if (v.empty()) v = validity_violation(cert);
  if (!v.empty()) lint_fail("server profile: " + v);
}

Botan::X509_Certificate issue_tls_certificate(const Botan::X509_Certificate& ca_cert,
                                              const Botan::Private_Key& ca_key,
                                              const Botan::Public_Key& subject_key, const std::string& common_name,
                                              const std::vector<std::string>& names, TlsRole role,
                                              Botan::RandomNumberGenerator& rng) {
  if (!ca_cert.is_CA_cert()) lint_fail("issuer certificate is not a CA");
  const bool server = role == TlsRole::Server;
  Botan::AlternativeName alt;
  for (const auto& n : names) {
    if (server && is_ipv4_literal(n))
      alt.add_attribute("IP", n);
    else if (is_valid_dns_name(n))
      alt.add_attribute("DNS", n);
    else
      lint_fail("'" + n + "' is neither an IPv4 address nor a DNS host name");
  }
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
  ext.add(new Botan::Cert_Extension::Key_Usage(Botan::DIGITAL_SIGNATURE), true);
  ext.add(new Botan::Cert_Extension::Extended_Key_Usage(
              std::vector<Botan::OID>{server ? kOidServerAuth : kOidClientAuth}),
          false);
  if (!server)
    ext.add(new Botan::Cert_Extension::Certificate_Policies(std::vector<Botan::OID>{Botan::OID(kStationPolicy)}),
            false);
  ext.add(new Botan::Cert_Extension::Subject_Key_ID(key_id(subject_key)), false);
  ext.add(new Botan::Cert_Extension::Authority_Key_ID(ca_cert.subject_key_id()), false);
  if (!names.empty()) ext.add(new Botan::Cert_Extension::Subject_Alternative_Name(alt), false);
  Botan::X509_DN dn;
  if (!server) dn.add_attribute("X520.OrganizationalUnit", kStationUnit);
  dn.add_attribute("X520.CommonName", common_name);
  const Botan::BigInt serial = random_serial(rng);
  const auto nb = now_time();
  const Botan::X509_Time na(std::chrono::system_clock::now() + std::chrono::hours(24 * kTlsValidityDays));
  // Lint the identical draft (placeholder signature) first, so the CA key never signs a certificate
  // outside its profile — above all never a station certificate that could also serve a server.
  const auto draft = sign_cert(lint_key(), serial, ca_cert.subject_dn(), dn, subject_key, ext, nb, na, rng);
  if (server)
    lint_server_certificate(draft);
  else
    lint_station_certificate(draft);
  return sign_cert(ca_key, serial, ca_cert.subject_dn(), dn, subject_key, ext, nb, na, rng);
}

Botan::X509_Certificate issue_station_certificate(const Botan::X509_Certificate& ca_cert,
                                                  const Botan::Private_Key& ca_key,
                                                  const Botan::Public_Key& station_key, const std::string& station_id,
                                                  Botan::RandomNumberGenerator& rng) {
  return issue_tls_certificate(ca_cert, ca_key, station_key, station_id, {}, TlsRole::Client, rng);
}

// ---------------------------------------------------------------------------------------------

std::vector<Botan::X509_Certificate> parse_certificates_pem(const std::string& pem) {
  static const std::string kBegin = "-----BEGIN CERTIFICATE-----";
  static const std::string kEnd = "-----END CERTIFICATE-----";
  std::vector<Botan::X509_Certificate> out;
  std::size_t pos = 0;
  while ((pos = pem.find(kBegin, pos)) != std::string::npos) {
    const std::size_t body = pos + kBegin.size();
    const std::size_t end = pem.find(kEnd, body);
    if (end == std::string::npos) bad_cert("PEM block without END line");
    try {
      const auto der = Botan::base64_decode(pem.substr(body, end - body), true);
      out.emplace_back(std::vector<std::uint8_t>(der.begin(), der.end()));
    } catch (const Botan::Exception&) {
      bad_cert("PEM certificate does not parse");
    }
    pos = end + kEnd.size();
  }
  if (out.empty()) bad_cert("no PEM certificate found");
  return out;
}

std::vector<Botan::X509_Certificate> load_certificates_pem(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(ErrorCode::Io, "cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_certificates_pem(ss.str());
}

std::string to_pem(const Botan::X509_Certificate& cert) { return cert.PEM_encode(); }

}  // namespace keyline::core
