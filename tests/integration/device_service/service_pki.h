// The manufacturer of the device-side service tests: root (burnt into the device ROM), Device CA,
// code-signing certificates under the root, and data packages for a chip; and a scratch directory.
#pragma once

#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>
#include <botan/pubkey.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>
#include <botan/x509self.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "keyline/core/cert_profile.h"
#include "keyline/core/data_package.h"

namespace keyline::test {

namespace fs = std::filesystem;
using core::Bytes;
using core::SecureBytes;

inline Botan::X509_Time not_before() {
  return Botan::X509_Time(std::chrono::system_clock::now() - std::chrono::hours(1));
}
inline Botan::X509_Time not_after() {
  return Botan::X509_Time("21991231235959Z", Botan::ASN1_Tag::GENERALIZED_TIME);
}
inline const Botan::OID kCodeSigning("1.3.6.1.5.5.7.3.3");

// A manufacturer: root (in the device ROM), Device CA, and code-signing certificates under the root.
class Manufacturer {
 public:
  Manufacturer()
      : m_root_key(m_rng, Botan::EC_Group("secp256r1")), m_ca_key(m_rng, Botan::EC_Group("secp256r1")) {
    Botan::X509_Cert_Options o("service test root/DE/Test Manufacturer");
    o.CA_key(1);
    o.start = not_before();
    o.end = not_after();
    m_root = Botan::X509::create_self_signed_cert(o, m_root_key, "SHA-256", m_rng);
    Botan::X509_Cert_Options c("service test device CA/DE/Test Manufacturer");
    c.CA_key(0);
    m_ca = sign(Botan::X509::create_cert_req(c, m_ca_key, "SHA-256", m_rng));
  }
  void write_root(const fs::path& p) const { std::ofstream(p) << core::to_pem(m_root); }

  struct Signer {
    SecureBytes pkcs8;
    Bytes cert_der;
  };
  // A code signer: EKU codeSigning unless `eku` says otherwise.
  Signer code_signer(const Botan::OID& eku = kCodeSigning) {
    Botan::ECDSA_PrivateKey key(m_rng, Botan::EC_Group("secp256r1"));
    Botan::X509_Cert_Options o("firmware signer/DE/Test Manufacturer");
    o.add_constraints(Botan::DIGITAL_SIGNATURE);
    o.add_ex_constraint(eku);
    const auto cert = sign(Botan::X509::create_cert_req(o, key, "SHA-256", m_rng));
    return {Botan::PKCS8::BER_encode(key), cert.BER_encode()};
  }

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
  Botan::RandomNumberGenerator& rng() { return m_rng; }

 private:
  Botan::X509_Certificate sign(const Botan::PKCS10_Request& req) {
    Botan::X509_CA root_ca(m_root, m_root_key, "SHA-256", m_rng);
    return root_ca.sign_request(req, m_rng, not_before(), not_after());
  }
  Botan::X509_Certificate issue(const std::vector<std::uint8_t>& spki, const core::ChipId& chip,
                                const std::string& imei, bool transport) {
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
    return Botan::X509_CA::make_cert(signer.get(), m_rng, alg, spki, not_before(), not_after(),
                                     m_ca.subject_dn(), subject, ext);
  }

  Botan::AutoSeeded_RNG m_rng;
  Botan::ECDSA_PrivateKey m_root_key;
  Botan::ECDSA_PrivateKey m_ca_key;
  Botan::X509_Certificate m_root;
  Botan::X509_Certificate m_ca;
};

class Scratch {
 public:
  Scratch() {
    static int n = 0;
    m_path = fs::temp_directory_path() /
             ("keyline-devsvc-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    fs::remove_all(m_path);
    fs::create_directories(m_path);
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
  const fs::path& path() const { return m_path; }

 private:
  fs::path m_path;
};

}  // namespace keyline::test
