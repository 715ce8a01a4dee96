// The KLKE envelope parser (core/kps_envelope.h) over untrusted bytes, as the KPS and the target see
// them. Properties: only core::Error escapes; a parsed envelope's signed part starts with its header
// bytes and is exactly what precedes the signature; checking its source against an unrelated root is
// refused with a core::Error (never accepted, never a crash).
#include <cstdint>
#include <cstdlib>

#include <botan/auto_rng.h>
#include <botan/ecdsa.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/kps_envelope.h"

namespace klke = keyline::core::kps_envelope;

namespace {
const std::vector<Botan::X509_Certificate>& unrelated_root() {
  static Botan::AutoSeeded_RNG rng;
  static Botan::ECDSA_PrivateKey key(rng, Botan::EC_Group("secp256r1"));
  static const std::vector<Botan::X509_Certificate> roots{keyline::core::make_root_certificate(key, "fuzz", "Fuzz", rng)};
  return roots;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  klke::Envelope e;
  try {
    e = klke::parse(data, size);
  } catch (const keyline::core::Error&) {
    return 0;
  }
  const auto header = klke::header_bytes(e.header);
  if (e.signed_part.size() < header.size() || !std::equal(header.begin(), header.end(), e.signed_part.begin()))
    std::abort();
  if (e.signed_part.size() + 2 + e.signature.size() != size) std::abort();
  try {
    klke::verify_source(e, unrelated_root());
    std::abort();  // nothing verifies under a root made here
  } catch (const keyline::core::Error&) {
  }
  return 0;
}
