// Certificates the root makes. Every one is first built as a draft with the very same TBS contents,
// signed by a throw-away in-process key, and linted; only a draft that passes reaches the root token
// (Boulder's rule: lint before signing), so a profile mistake never costs a root signature.
#include <chrono>
#include <memory>
#include <set>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pubkey.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>
#include <botan/x509_key.h>

#include "keyline/ceremony/errors.h"
#include "keyline/ceremony/profiles.h"
#include "keyline/core/cert_profile.h"

namespace keyline::ceremony {

namespace {

const Botan::OID kOidBasicConstraints("2.5.29.19");
const Botan::OID kOidKeyUsage("2.5.29.15");
const Botan::OID kOidEku("2.5.29.37");
const Botan::OID kOidSki("2.5.29.14");
const Botan::OID kOidAki("2.5.29.35");
const Botan::OID kOidP256("1.2.840.10045.3.1.7");
const Botan::OID kOidCodeSigning("1.3.6.1.5.5.7.3.3");
constexpr std::size_t kRootPathLimit = 1;

[[noreturn]] void lint_fail(Profile p, const std::string& rule) {
  throw core::Error(core::ErrorCode::CertificateLint, "certificate profile lint (" + profile_name(p) + "): " + rule);
}

Botan::BigInt random_serial(Botan::RandomNumberGenerator& rng) {
  std::uint8_t b[16];
  rng.randomize(b, sizeof b);
  b[0] = static_cast<std::uint8_t>((b[0] & 0x7F) | 0x40);  // positive, 16 octets, never zero
  return Botan::BigInt(b, sizeof b);
}

std::vector<std::uint8_t> ski(const std::vector<std::uint8_t>& spki) {
  return Botan::Cert_Extension::Subject_Key_ID(spki, "SHA-256").get_key_id();
}

struct Tbs {
  Botan::BigInt serial;
  Botan::X509_Time not_before, not_after;
  Botan::X509_DN issuer, subject;
  std::vector<std::uint8_t> spki;
  Botan::Extensions ext;
};

Botan::X509_Certificate sign_tbs(const Tbs& t, const Botan::Private_Key& key, Botan::RandomNumberGenerator& rng) {
  Botan::AlgorithmIdentifier sig_algo;
  std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(key, rng, "SHA-256", sig_algo));
  return Botan::X509_CA::make_cert(signer.get(), rng, t.serial, sig_algo, t.spki, t.not_before, t.not_after,
                                   t.issuer, t.subject, t.ext);
}

const Botan::Private_Key& draft_key() {
  static Botan::AutoSeeded_RNG rng;
  static const Botan::ECDSA_PrivateKey key(rng, Botan::EC_Group("secp256r1"));
  return key;
}

Botan::X509_Time days_from_now(long days) {
  return Botan::X509_Time(std::chrono::system_clock::now() + std::chrono::hours(24) * days);
}
// One minute back, so a verifier whose clock is slightly behind still sees a valid notBefore.
Botan::X509_Time now_time() { return Botan::X509_Time(std::chrono::system_clock::now() - std::chrono::minutes(1)); }

Botan::Extensions profile_extensions(Profile p, const std::vector<std::uint8_t>& spki,
                                     const Botan::X509_Certificate& root) {
  using namespace Botan::Cert_Extension;
  Botan::Extensions ext;
  if (p == Profile::DeviceCa || p == Profile::ServiceCa) {
    ext.add(new Basic_Constraints(true, 0), true);
    ext.add(new Key_Usage(Botan::Key_Constraints(Botan::KEY_CERT_SIGN | Botan::CRL_SIGN)), true);
  } else {
    ext.add(new Basic_Constraints(false), true);
    ext.add(new Key_Usage(Botan::DIGITAL_SIGNATURE), true);
    ext.add(new Extended_Key_Usage({p == Profile::Station ? Botan::OID("1.3.6.1.5.5.7.3.2") : kOidCodeSigning}),
            false);
    if (p == Profile::Station)
      ext.add(new Certificate_Policies(std::vector<Botan::OID>{Botan::OID(core::kStationPolicy)}), false);
  }
  ext.add(new Subject_Key_ID(ski(spki)), false);
  ext.add(new Authority_Key_ID(root.subject_key_id()), false);
  return ext;
}

std::string key_violation(const Botan::X509_Certificate& c) {
  try {
    std::unique_ptr<Botan::Public_Key> key(c.subject_public_key());
    const auto* ec = dynamic_cast<const Botan::EC_PublicKey*>(key.get());
    if (!ec || key->algo_name() != "ECDSA" || ec->domain().get_curve_oid() != kOidP256) return "key must be ECDSA P-256";
  } catch (const Botan::Exception&) {
    return "subject public key does not decode";
  }
  if (!(c.signature_algorithm().get_oid() == Botan::OID::from_string("ECDSA/EMSA1(SHA-256)")))
    return "signature algorithm must be ecdsa-with-SHA256";
  return {};
}

// Rules tied to the issuer, for every profile.
std::string root_violation(const Botan::X509_Certificate& c, const Botan::X509_Certificate& root) {
  if (c.x509_version() != 3) return "version must be v3";
  if (!(c.issuer_dn() == root.subject_dn())) return "issuer must be the root's subject";
  if (c.authority_key_id() != root.subject_key_id()) return "authorityKeyIdentifier must be the root's SKI";
  if (c.subject_key_id().empty()) return "subjectKeyIdentifier missing";
  if (c.serial_number().empty() || c.serial_number().size() > 20 || (c.serial_number()[0] & 0x80))
    return "serial must be positive and at most 20 octets";
  if (!(c.not_before() < c.not_after())) return "notAfter must follow notBefore";
  if (root.not_after() < c.not_after()) return "validity must end before the root's (" + root.not_after().readable_string() + ")";
  return key_violation(c);
}

std::string extension_set_violation(const Botan::X509_Certificate& c, const std::set<Botan::OID>& allowed) {
  const auto& ext = c.v3_extensions();
  for (const auto& oid : ext.get_extension_oids())
    if (!allowed.count(oid)) return "unexpected extension " + oid.to_string();
  if (!ext.critical_extension_set(kOidBasicConstraints)) return "basicConstraints must be present and critical";
  if (!ext.critical_extension_set(kOidKeyUsage)) return "keyUsage must be present and critical";
  return {};
}

std::string ca_violation(const Botan::X509_Certificate& c) {
  if (auto v = extension_set_violation(c, {kOidBasicConstraints, kOidKeyUsage, kOidSki, kOidAki}); !v.empty()) return v;
  if (!c.is_CA_cert() || c.path_limit() != 0) return "a Device or service CA is CA:true with path length 0";
  if (c.constraints() != Botan::Key_Constraints(Botan::KEY_CERT_SIGN | Botan::CRL_SIGN))
    return "keyUsage must be exactly keyCertSign and cRLSign";
  return {};
}

std::string code_signing_violation(const Botan::X509_Certificate& c) {
  if (auto v = extension_set_violation(c, {kOidBasicConstraints, kOidKeyUsage, kOidEku, kOidSki, kOidAki}); !v.empty())
    return v;
  if (c.is_CA_cert()) return "a code-signing certificate is CA:false";
  if (c.constraints() != Botan::DIGITAL_SIGNATURE) return "keyUsage must be exactly digitalSignature";
  if (c.extended_key_usage() != std::vector<Botan::OID>{kOidCodeSigning})
    return "extendedKeyUsage must be exactly codeSigning";
  return {};
}

}  // namespace

// notAfter - notBefore within the profile's maximum (notBefore is a minute back for clock skew; five minutes of slack).
std::string validity_violation(const Botan::X509_Certificate& c, Profile p) {
  const auto span = c.not_after().to_std_timepoint() - c.not_before().to_std_timepoint();
  if (span > std::chrono::hours(24) * max_days(p) + std::chrono::minutes(5))
    return "validity longer than the " + profile_name(p) + " profile's " + std::to_string(max_days(p)) + " days";
  return {};
}

void lint_issued(const Botan::X509_Certificate& draft, Profile p, const Botan::X509_Certificate& root) {
  std::string v = root_violation(draft, root);
  if (v.empty()) v = validity_violation(draft, p);
  if (v.empty() && (p == Profile::DeviceCa || p == Profile::ServiceCa)) v = ca_violation(draft);
  if (v.empty() && p == Profile::CodeSigning) v = code_signing_violation(draft);
  if (!v.empty()) lint_fail(p, v);
  if (p == Profile::Station) core::lint_station_certificate(draft);
}

Botan::X509_Certificate make_root(const Botan::Private_Key& root_key, const std::string& common_name,
                                  const std::string& organization, long days, Botan::RandomNumberGenerator& rng) {
  using namespace Botan::Cert_Extension;
  Tbs t;
  t.serial = random_serial(rng);
  t.not_before = now_time();
  t.not_after = days_from_now(days);
  if (!organization.empty()) t.subject.add_attribute("X520.Organization", organization);
  t.subject.add_attribute("X520.CommonName", common_name);
  t.issuer = t.subject;
  t.spki = Botan::X509::BER_encode(root_key);
  t.ext.add(new Basic_Constraints(true, kRootPathLimit), true);
  t.ext.add(new Key_Usage(Botan::Key_Constraints(Botan::KEY_CERT_SIGN | Botan::CRL_SIGN)), true);
  t.ext.add(new Subject_Key_ID(ski(t.spki)), false);
  const auto cert = sign_tbs(t, root_key, rng);
  if (!cert.check_signature(root_key)) throw core::Error(core::ErrorCode::Crypto, "root self-signature does not verify");
  return cert;
}

Botan::X509_Certificate issue(const Botan::X509_Certificate& root, const Botan::Private_Key& root_key,
                              const Botan::PKCS10_Request& req, const Botan::X509_DN& subject, Profile p, long days,
                              bool clamp_to_root, Botan::RandomNumberGenerator& rng) {
  Tbs t;
  t.serial = random_serial(rng);
  t.not_before = now_time();
  t.not_after = days_from_now(days);
  if (clamp_to_root && root.not_after() < t.not_after) t.not_after = root.not_after();
  t.issuer = root.subject_dn();
  t.subject = subject;
  t.spki = req.raw_public_key();
  t.ext = profile_extensions(p, t.spki, root);
  lint_issued(sign_tbs(t, draft_key(), rng), p, root);
  const auto cert = sign_tbs(t, root_key, rng);
  std::unique_ptr<Botan::Public_Key> root_pub(root.subject_public_key());
  if (!cert.check_signature(*root_pub)) throw core::Error(core::ErrorCode::Crypto, "issued certificate does not verify");
  return cert;
}

}  // namespace keyline::ceremony
