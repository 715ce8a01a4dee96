// A software module as LOAD MODULE delivers it (core/service_module.h): untrusted bytes from the
// service channel. A module that parses encodes back to the same bytes; verify_module against a root
// that signed nothing throws ModuleNotTrusted, never anything else.
#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/x509self.h>

#include <cstdint>
#include <cstdlib>

#include "keyline/core/error.h"
#include "keyline/core/service_module.h"

namespace {
const Botan::X509_Certificate& unrelated_root() {
  static const Botan::X509_Certificate root = [] {
    Botan::AutoSeeded_RNG rng;
    const Botan::ECDSA_PrivateKey key(rng, Botan::EC_Group("secp256r1"));
    Botan::X509_Cert_Options opts("fuzz root");
    opts.CA_key();
    return Botan::X509::create_self_signed_cert(opts, key, "SHA-256", rng);
  }();
  return root;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const auto m = service::parse_module(data, size);
    if (service::encode_module(m) != Bytes(data, data + size)) std::abort();
    try {
      service::verify_module(m, unrelated_root());
      std::abort();  // nothing the fuzzer makes is signed under this root
    } catch (const Error& e) {
      if (e.code() != ErrorCode::ModuleNotTrusted) std::abort();
    }
  } catch (const FormatError& e) {
    if (e.code() != ErrorCode::BadServiceModule) std::abort();
  }
  return 0;
}
