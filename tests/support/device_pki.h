// A throwaway manufacturer PKI for the device tests (unit and integration): root (the ROM trust anchor),
// Device CA, and per chip an identity certificate (HardwareModuleName = chip ID, serialNumber = IMEI)
// and a transport certificate, packed into a core::DataPackage as the station would send it.
#pragma once

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>
#include <botan/pubkey.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>
#include <botan/x509self.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/data_package.h"

namespace keyline::test {

inline Botan::X509_Time not_before() {
  return Botan::X509_Time(std::chrono::system_clock::now() - std::chrono::hours(1));
}
inline Botan::X509_Time not_after() {
  return Botan::X509_Time("21991231235959Z", Botan::ASN1_Tag::GENERALIZED_TIME);
}

class DevicePki {
 public:
  // `name` begins the subjects: "<name> root/DE/Test Manufacturer", "<name> device CA/DE/Test Manufacturer".
  explicit DevicePki(const std::string& name = "keyline test")
      : m_root_key(m_rng, Botan::EC_Group("secp256r1")), m_ca_key(m_rng, Botan::EC_Group("secp256r1")),
        m_root(make_root(name)), m_ca(make_ca(name)) {}

  const Botan::X509_Certificate& root() const { return m_root; }
  const Botan::X509_Certificate& ca() const { return m_ca; }

  void write_root(const std::filesystem::path& path) const {
    std::ofstream(path) << core::to_pem(m_root);
  }

  // A complete, valid data package for this chip and IMEI.
  core::DataPackage package_for(const core::ChipId& chip, const std::string& imei) {
    Botan::ECDSA_PrivateKey id_key(m_rng, Botan::EC_Group("secp256r1"));
    Botan::Curve25519_PrivateKey tr_key(m_rng);
    core::DataPackage p;
    p.imei = core::Imei::parse(imei);
    p.station_id = "station-test";
    p.issued_at = 1700000000;
    p.identity_cert = issue(id_key.subject_public_key(), chip, imei, false).BER_encode();
    p.transport_cert = issue(tr_key.subject_public_key(), chip, imei, true).BER_encode();
    p.ca_chain = {m_ca.BER_encode()};
    p.identity_key = Botan::PKCS8::BER_encode(id_key);
    p.transport_key = tr_key.get_x();
    p.comm_key.resize(32);
    m_rng.randomize(p.comm_key.data(), p.comm_key.size());
    return p;
  }

  // An identity certificate signed by a CA that is not under the root.
  core::DataPackage package_from_rogue_ca(const core::ChipId& chip, const std::string& imei) {
    DevicePki rogue;
    auto p = rogue.package_for(chip, imei);
    return p;
  }

  Botan::RandomNumberGenerator& rng() { return m_rng; }

 protected:
  // A certificate for `req` signed by the root.
  Botan::X509_Certificate sign_under_root(const Botan::PKCS10_Request& req) {
    Botan::X509_CA root_ca(m_root, m_root_key, "SHA-256", m_rng);
    return root_ca.sign_request(req, m_rng, not_before(), not_after());
  }

 private:
  Botan::X509_Certificate make_root(const std::string& name) {
    Botan::X509_Cert_Options o(name + " root/DE/Test Manufacturer");
    o.CA_key(1);
    o.start = not_before();
    o.end = not_after();
    return Botan::X509::create_self_signed_cert(o, m_root_key, "SHA-256", m_rng);
  }

  Botan::X509_Certificate make_ca(const std::string& name) {
    Botan::X509_Cert_Options o(name + " device CA/DE/Test Manufacturer");
    o.CA_key(0);
    return sign_under_root(Botan::X509::create_cert_req(o, m_ca_key, "SHA-256", m_rng));
  }

  Botan::X509_Certificate issue(const std::vector<std::uint8_t>& spki, const core::ChipId& chip, const std::string& imei,
                                bool transport) {
    Botan::AlgorithmIdentifier alg;
    std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(m_ca_key, m_rng, "SHA-256", alg));
    Botan::X509_DN subject;
    subject.add_attribute("X520.SerialNumber", imei);
    subject.add_attribute("X520.CommonName", transport ? "transport " + imei : "device " + imei);
    Botan::Extensions ext;
    ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
    ext.add(new Botan::Cert_Extension::Key_Usage(transport ? Botan::Key_Constraints::KEY_AGREEMENT
                                                            : Botan::Key_Constraints::DIGITAL_SIGNATURE),
            true);
    ext.add(new Botan::Cert_Extension::Authority_Key_ID(m_ca.subject_key_id()));
    ext.add(new Botan::Cert_Extension::Subject_Key_ID(spki, "SHA-256"));
    ext.add(new core::HardwareModuleNameExtension(Botan::OID(core::kDefaultHwType), chip));
    return Botan::X509_CA::make_cert(signer.get(), m_rng, alg, spki, not_before(), not_after(), m_ca.subject_dn(),
                                     subject, ext);
  }

  Botan::AutoSeeded_RNG m_rng;
  Botan::ECDSA_PrivateKey m_root_key;
  Botan::ECDSA_PrivateKey m_ca_key;
  Botan::X509_Certificate m_root;
  Botan::X509_Certificate m_ca;
};

}  // namespace keyline::test
