// The manufacturer of the device-side service tests: the device PKI of every device test
// (tests/support/device_pki.h) and code-signing certificates under its root; and a scratch directory.
#pragma once

#include <botan/ecdsa.h>
#include <botan/pkcs8.h>
#include <botan/x509self.h>

#include <filesystem>
#include <string>

#include "device_pki.h"
#include "scratch_dir.h"

namespace keyline::test {

namespace fs = std::filesystem;
using core::Bytes;
using core::SecureBytes;

inline const Botan::OID kCodeSigning("1.3.6.1.5.5.7.3.3");

// A manufacturer: root (in the device ROM), Device CA, and code-signing certificates under the root.
class Manufacturer : public DevicePki {
 public:
  Manufacturer() : DevicePki("service test") {}

  struct Signer {
    SecureBytes pkcs8;
    Bytes cert_der;
  };
  // A code signer: EKU codeSigning unless `eku` says otherwise.
  Signer code_signer(const Botan::OID& eku = kCodeSigning) {
    Botan::ECDSA_PrivateKey key(rng(), Botan::EC_Group("secp256r1"));
    Botan::X509_Cert_Options o("firmware signer/DE/Test Manufacturer");
    o.add_constraints(Botan::DIGITAL_SIGNATURE);
    o.add_ex_constraint(eku);
    const auto cert = sign_under_root(Botan::X509::create_cert_req(o, key, "SHA-256", rng()));
    return {Botan::PKCS8::BER_encode(key), cert.BER_encode()};
  }
};

class Scratch : public ScratchDir {
 public:
  Scratch() : ScratchDir("devsvc") {}
};

}  // namespace keyline::test
