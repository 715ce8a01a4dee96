#include "keyline/core/csr.h"

#include <memory>

#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pem.h>
#include <botan/x509_ext.h>

#include "keyline/core/error.h"

namespace keyline::core {

std::string make_csr_pem(const Botan::Private_Key& key, const Botan::X509_DN& subject,
                         Botan::RandomNumberGenerator& rng) {
  const auto req = Botan::PKCS10_Request::create(key, subject, Botan::Extensions(), "SHA-256", rng);
  return req.PEM_encode();
}

namespace {

[[noreturn]] void bad_csr(const std::string& why) { throw FormatError(ErrorCode::BadCertificate, "CSR: " + why); }

std::vector<std::uint8_t> csr_der(const Bytes& in) {
  const std::string text(in.begin(), in.end());
  if (text.find("-----BEGIN") == std::string::npos) return std::vector<std::uint8_t>(in.begin(), in.end());
  try {
    const auto der = Botan::PEM_Code::decode_check_label(text, "CERTIFICATE REQUEST");
    return std::vector<std::uint8_t>(der.begin(), der.end());
  } catch (const Botan::Exception&) {
    bad_csr("not a PEM CERTIFICATE REQUEST");
  }
}

}  // namespace

Botan::PKCS10_Request parse_csr(const Bytes& pem_or_der) {
  std::unique_ptr<Botan::PKCS10_Request> req;
  try {
    req = std::make_unique<Botan::PKCS10_Request>(csr_der(pem_or_der));
  } catch (const Botan::Exception& e) {
    // Botan 2.19's PKCS10_Request checks the self-signature while decoding and says so in its message.
    if (std::string(e.what()).find("Bad signature") != std::string::npos) bad_csr("self-signature does not verify");
    bad_csr(std::string("does not parse (") + e.what() + ")");
  }
  std::unique_ptr<Botan::Public_Key> key;
  try {
    key.reset(req->subject_public_key());
  } catch (const Botan::Exception&) {
    bad_csr("subject public key does not decode");
  }
  const auto* ec = dynamic_cast<const Botan::EC_PublicKey*>(key.get());
  if (!ec || key->algo_name() != "ECDSA" || ec->domain().get_curve_oid() != Botan::OID("1.2.840.10045.3.1.7"))
    bad_csr("key must be ECDSA P-256");
  if (!(req->signature_algorithm().get_oid() == Botan::OID::from_string("ECDSA/EMSA1(SHA-256)")))
    bad_csr("signature algorithm must be ecdsa-with-SHA256");
  if (!req->check_signature(*key)) bad_csr("self-signature does not verify");
  return *req;
}

}  // namespace keyline::core
