// Custody statements from untrusted bytes (keyline::ceremony::parse_statement): whatever parses has a
// signed part that is a prefix of the input ending at a line, every member the outcome line copies, and
// only names and values the format allows. check_statement then runs against a throw-away root no
// station is under: it must refuse (a core::Error), never crash or accept.
#include <cstdint>
#include <cstdlib>
#include <string>

#include <botan/auto_rng.h>
#include <botan/ecdsa.h>
#include <botan/x509self.h>

#include "keyline/ceremony/statement.h"
#include "keyline/core/error.h"

namespace {

bool allowed(const std::string& name, const std::string& value) {
  if (name.empty() || name.size() > 32) return false;
  for (const char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  for (const char c : value)
    if (c < 0x20 || c > 0x7E) return false;
  return true;
}

const Botan::X509_Certificate& fuzz_root() {
  static const Botan::X509_Certificate root = [] {
    Botan::AutoSeeded_RNG rng;
    Botan::ECDSA_PrivateKey key(rng, Botan::EC_Group("secp256r1"));
    Botan::X509_Cert_Options opt("fuzz root");
    opt.CA_key(1);
    return Botan::X509::create_self_signed_cert(opt, key, "SHA-256", rng);
  }();
  return root;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto st = keyline::ceremony::parse_statement(text);
    if (text.compare(0, st.signed_part.size(), st.signed_part) != 0 || st.signed_part.back() != '\n') std::abort();
    for (const auto* part : {&st.fields, &st.trailer})
      for (const auto& [name, value] : *part)
        if (!allowed(name, value)) std::abort();
    for (const auto& m : keyline::ceremony::statement_members())
      if (!st.fields.count(m)) std::abort();
    keyline::ceremony::check_statement(st, fuzz_root());
    std::abort();  // nothing in the corpus is signed by a station under the fuzz root
  } catch (const keyline::core::Error&) {
  }
  return 0;
}
