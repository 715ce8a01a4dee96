#include "oce.h"

#include <chrono>

#include <botan/bigint.h>
#include <botan/pubkey.h>
#include <botan/pk_keys.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>

#include "keyline/core/chip_identity.h"
#include "keyline/core/error.h"

namespace keyline::station {

namespace {

constexpr const char* kOceUnit = "keyline station OCE";

Botan::BigInt random_serial(Botan::RandomNumberGenerator& rng) {
  std::uint8_t b[16];
  rng.randomize(b, sizeof b);
  b[0] = static_cast<std::uint8_t>((b[0] & 0x7F) | 0x40);  // positive, 16 octets, never zero (RFC 5280 4.1.2.2)
  return Botan::BigInt(b, sizeof b);
}

}  // namespace

Botan::X509_Certificate issue_oce_certificate(const Botan::X509_Certificate& device_ca, const Botan::Private_Key& ca_key,
                                              const Botan::Public_Key& oce_key, const std::string& station_id,
                                              Botan::RandomNumberGenerator& rng) {
  if (!device_ca.is_CA_cert()) throw core::Error(core::ErrorCode::CertificateLint, "the Device CA certificate is not a CA");
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
  // GP Amendment F section 6.5.1: the OCE key is a key-agreement key (ECKA); it signs nothing.
  ext.add(new Botan::Cert_Extension::Key_Usage(Botan::KEY_AGREEMENT), true);
  ext.add(new Botan::Cert_Extension::Certificate_Policies(std::vector<Botan::OID>{Botan::OID(core::chip::kOcePolicyOid)}),
          false);
  ext.add(new Botan::Cert_Extension::Subject_Key_ID(oce_key.subject_public_key(), "SHA-256"), false);
  ext.add(new Botan::Cert_Extension::Authority_Key_ID(device_ca.subject_key_id()), false);
  Botan::X509_DN dn;
  dn.add_attribute("X520.OrganizationalUnit", kOceUnit);
  dn.add_attribute("X520.CommonName", station_id);
  const auto now = std::chrono::system_clock::now();
  Botan::X509_Time not_after(now + std::chrono::hours(24 * kOceValidityDays));
  if (device_ca.not_after() < not_after) not_after = device_ca.not_after();
  Botan::AlgorithmIdentifier sig_algo;
  std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(ca_key, rng, "SHA-256", sig_algo));
  return Botan::X509_CA::make_cert(signer.get(), rng, random_serial(rng), sig_algo, oce_key.subject_public_key(),
                                   Botan::X509_Time(now), not_after, device_ca.subject_dn(), dn, ext);
}

bool is_oce_certificate_for(const Botan::X509_Certificate& cert, const Botan::X509_Certificate& device_ca,
                            const Botan::Public_Key& oce_key) {
  try {
    if (cert.subject_public_key_info() != oce_key.subject_public_key()) return false;
    if (cert.issuer_dn() != device_ca.subject_dn()) return false;
    const auto ca_key = device_ca.subject_public_key();
    if (cert.verify_signature(*ca_key) != Botan::Certificate_Status_Code::VERIFIED) return false;
    if (cert.is_CA_cert() || cert.constraints() != Botan::KEY_AGREEMENT) return false;
    const auto policies = cert.certificate_policy_oids();
    if (policies.size() != 1 || policies[0] != Botan::OID(core::chip::kOcePolicyOid)) return false;
    return cert.not_after() > Botan::X509_Time(std::chrono::system_clock::now());
  } catch (const Botan::Exception&) {
    return false;
  }
}

bool is_current_oce_certificate(const Botan::X509_Certificate& cert, const Botan::X509_Certificate& device_ca,
                                const Botan::Public_Key& oce_key, const std::string& station_id) {
  // Renewed a month before it lapses, like the TLS certificates (station/src/keys.cpp).
  return is_oce_certificate_for(cert, device_ca, oce_key) &&
         cert.subject_dn().get_first_attribute("X520.CommonName") == station_id &&
         cert.not_after() > Botan::X509_Time(std::chrono::system_clock::now() + std::chrono::hours(24 * 30));
}

}  // namespace keyline::station
