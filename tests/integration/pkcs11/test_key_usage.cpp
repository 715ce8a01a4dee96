// Every key template names every usage attribute (core/src/pkcs11.cpp): SoftHSM 2.6 turns on what a
// template leaves out, which made the AES wrapping key a C_WrapKey key and every signing key an
// encryption, unwrap and ECDH key too. Read back with C_GetAttributeValue and with pkcs11-tool.
#include <doctest/doctest.h>

#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "keyline/core/error.h"
#include "keyline/core/pkcs11.h"
#include "testenv.h"

using namespace keyline::core;

namespace {

std::shared_ptr<Pkcs11Token> token() {
  const auto env = keyline::test::hsm_env();
  return Pkcs11Token::open(env.module, env.label, SecureBytes(env.user_pin.begin(), env.user_pin.end()), 4);
}

std::string unique(const std::string& what) {
  static std::atomic<int> n{0};
  return "usage-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

const std::map<CK_ATTRIBUTE_TYPE, const char*> kUsages = {
    {CKA_ENCRYPT, "CKA_ENCRYPT"}, {CKA_DECRYPT, "CKA_DECRYPT"},       {CKA_SIGN, "CKA_SIGN"},
    {CKA_VERIFY, "CKA_VERIFY"},   {CKA_WRAP, "CKA_WRAP"},             {CKA_UNWRAP, "CKA_UNWRAP"},
    {CKA_DERIVE, "CKA_DERIVE"},   {CKA_SIGN_RECOVER, "CKA_SIGN_RECOVER"}, {CKA_VERIFY_RECOVER, "CKA_VERIFY_RECOVER"}};

// Exactly the usages in `on` are true; every other usage attribute the object has is false.
void usages_are(Pkcs11Session& s, Pkcs11Handle h, const std::vector<CK_ATTRIBUTE_TYPE>& on) {
  for (const auto& [type, name] : kUsages) {
    CAPTURE(name);
    bool value = false;
    try {
      value = s.bool_attribute(h, type);
    } catch (const Pkcs11Error& e) {
      // An attribute the object class does not have (CKA_SIGN on a public key) cannot be true.
      REQUIRE(e.rv() == CKR_ATTRIBUTE_TYPE_INVALID);
    }
    CHECK(value == (std::find(on.begin(), on.end(), type) != on.end()));
  }
  CHECK_FALSE(s.bool_attribute(h, CKA_MODIFIABLE));  // nobody can switch a usage on later
}

void private_and_locked(Pkcs11Session& s, Pkcs11Handle h) {
  CHECK(s.bool_attribute(h, CKA_SENSITIVE));
  CHECK_FALSE(s.bool_attribute(h, CKA_EXTRACTABLE));
  CHECK(s.bool_attribute(h, CKA_NEVER_EXTRACTABLE));
}

std::string pkcs11_tool_list() {
  const auto env = keyline::test::hsm_env();
  FILE* p = ::popen(("pkcs11-tool --module " + env.module + " --token-label " + env.label + " --login --pin " +
                     env.user_pin + " -O 2>/dev/null").c_str(),
                    "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  REQUIRE(::pclose(p) == 0);
  return out;
}

// The "Usage:" line pkcs11-tool prints for the object of this kind and label.
std::string tool_usage(const std::string& listing, const std::string& kind, const std::string& label) {
  std::size_t pos = 0;
  while ((pos = listing.find(kind, pos)) != std::string::npos) {
    const std::size_t next = listing.find(" Object", pos + kind.size());
    const std::string block = listing.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
    pos += kind.size();
    if (block.find("label:      " + label + "\n") == std::string::npos) continue;
    const std::size_t u = block.find("Usage:");
    if (u == std::string::npos) return {};
    const std::size_t eol = block.find('\n', u);
    std::string line = block.substr(u + 6, eol - u - 6);
    line.erase(0, line.find_first_not_of(' '));
    return line;
  }
  return "absent";
}

}  // namespace

TEST_CASE("a P-256 key pair: the private half signs and nothing else, the public half verifies and nothing else") {
  auto t = token();
  const std::string label = unique("ec");
  const auto pair = t->generate_ec_p256(label, Bytes{0x07});
  {
    auto s = t->session();
    usages_are(*s, pair.private_key, {CKA_SIGN});
    private_and_locked(*s, pair.private_key);
    usages_are(*s, pair.public_key, {CKA_VERIFY});
  }
  const auto listing = pkcs11_tool_list();
  CHECK(tool_usage(listing, "Private Key Object", label) == "sign");
  CHECK(tool_usage(listing, "Public Key Object", label) == "verify");
}

TEST_CASE("the master (HMAC) key signs only; the wrap (AES) key encrypts and decrypts only, never wraps") {
  auto t = token();
  const std::string master = unique("master"), wrap = unique("wrap");
  const auto hm = t->generate_hmac_key(master);
  const auto hw = t->generate_aes_key(wrap);
  {
    auto s = t->session();
    usages_are(*s, hm, {CKA_SIGN});
    private_and_locked(*s, hm);
    usages_are(*s, hw, {CKA_ENCRYPT, CKA_DECRYPT});
    private_and_locked(*s, hw);
  }
  // The master still does its one job (the wrap round trip is test_pkcs11.cpp's).
  CHECK(t->derive_hmac_sha256(master, Bytes{'1'}).size() == 32);
  const auto listing = pkcs11_tool_list();
  CHECK(tool_usage(listing, "Secret Key Object", wrap) == "encrypt, decrypt");
  CHECK(tool_usage(listing, "Secret Key Object", master) != "absent");
  CHECK(tool_usage(listing, "Secret Key Object", master).find("wrap") == std::string::npos);
}
