// The token's side of dual control (docs/custody.md, docs/decisions.md "The master mirrored under dual
// control"): the user alone cannot take a mirrorable master off the token; only a key the Security Officer
// marked trusted wraps it; the unwrapped copy is what the template says and derives what the original does.
#include <doctest/doctest.h>

#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <tuple>

#include "keyline/core/error.h"
#include "keyline/core/pkcs11.h"
#include "testenv.h"

using namespace keyline::core;

namespace {

std::shared_ptr<Pkcs11Token> user_token() {
  const auto env = keyline::test::hsm_env();
  return Pkcs11Token::open(env.module, env.label, SecureBytes(env.user_pin.begin(), env.user_pin.end()), 2);
}

std::string unique(const std::string& what) { return "custody-" + what + "-" + std::to_string(::getpid()); }

const Pkcs11KeyInfo* find(const std::vector<Pkcs11KeyInfo>& keys, const std::string& label, const char* cls) {
  for (const auto& k : keys)
    if (k.label == label && k.object_class == cls) return &k;
  return nullptr;
}

unsigned long rv_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Pkcs11Error& e) {
    return e.rv();
  }
  return CKR_OK;
}

// Keys labelled `label` or unlabelled (what a half-made unwrap leaves): other tests share the token, so
// only these are counted.
std::size_t count_keys(Pkcs11Token& t, const std::string& label) {
  std::size_t n = 0;
  for (const auto& k : t.list_keys()) n += k.label == label || k.label.empty();
  return n;
}

}  // namespace

TEST_CASE("only a key the SO trusted wraps the mirrorable master; the copy derives the same") {
  const auto env = keyline::test::hsm_env();
  const std::string master = unique("master"), legacy = unique("legacy"), rx = unique("rx"),
                    trusted = unique("trusted"), copy = unique("copy");
  const Bytes data{'k', 'e', 'y'};
  Bytes modulus, exponent;
  {
    auto t = user_token();
    t->generate_mirrorable_hmac_key(master, Bytes{0, 0, 0, 2});
    t->generate_hmac_key(legacy);
    t->generate_rsa_receiving_pair(rx, Bytes{1});
    std::tie(modulus, exponent) = t->rsa_public_key(rx);
    CHECK(modulus.size() == 384);
    const auto keys = t->list_keys();
    const auto* m = find(keys, master, "secret");
    REQUIRE(m);
    CHECK((m->sensitive && m->extractable && m->wrap_with_trusted && !m->trusted));
    CHECK(m->usages == std::vector<std::string>{"sign"});
    const auto* r = find(keys, rx, "private");
    REQUIRE(r);
    CHECK((r->sensitive && !r->extractable && r->never_extractable));
    CHECK(r->usages == std::vector<std::string>{"unwrap"});
    // The user alone, with a wrapping key of its own making: the token refuses (dual control).
    CHECK(rv_of([&] { t->wrap_key_rsa_oaep(t->find_public_key(rx), t->find_secret_key(master)); }) ==
          CKR_KEY_NOT_WRAPPABLE);
  }  // the user logs out: the SO logs in below (login state is the application's)
  Pkcs11Token::so_create_trusted_rsa_wrap_key(env.module, env.label,
                                              SecureBytes(env.so_pin.begin(), env.so_pin.end()), trusted, Bytes{2},
                                              modulus, exponent);
  CHECK_THROWS_AS(Pkcs11Token::so_create_trusted_rsa_wrap_key(env.module, env.label,
                                                              SecureBytes(env.user_pin.begin(), env.user_pin.end()),
                                                              unique("by-user"), Bytes{3}, modulus, exponent),
                  Pkcs11Error);
  auto t = user_token();
  const auto listed = t->list_keys();
  const auto* tk = find(listed, trusted, "public");
  REQUIRE(tk);
  CHECK((tk->trusted && tk->usages == std::vector<std::string>{"wrap"}));
  const auto wrapping = t->find_public_key(trusted);
  // Version 1 of the master is never extractable, trusted key or not (CKA_EXTRACTABLE false is final).
  CHECK(rv_of([&] { t->wrap_key_rsa_oaep(wrapping, t->find_secret_key(legacy)); }) == CKR_KEY_UNEXTRACTABLE);
  const Bytes wrapped = t->wrap_key_rsa_oaep(wrapping, t->find_secret_key(master));
  CHECK(wrapped.size() == 384);

  Bytes changed = wrapped;
  changed[200] ^= 0x01;
  const auto before = count_keys(*t, copy);
  CHECK_THROWS_AS(t->unwrap_hmac_key_rsa_oaep(t->find_private_key(rx), changed, copy, Bytes{0, 0, 0, 2}), CryptoError);
  CHECK(count_keys(*t, copy) == before);  // a refused unwrap leaves no half-made key

  t->unwrap_hmac_key_rsa_oaep(t->find_private_key(rx), wrapped, copy, Bytes{0, 0, 0, 2});
  CHECK(t->derive_hmac_sha256(copy, data) == t->derive_hmac_sha256(master, data));
  CHECK(t->derive_hmac_sha256(legacy, data) != t->derive_hmac_sha256(master, data));
  const auto after = t->list_keys();
  const auto* c = find(after, copy, "secret");
  REQUIRE(c);
  CHECK((c->sensitive && c->extractable && c->wrap_with_trusted && !c->never_extractable && !c->local));
  CHECK(c->usages == std::vector<std::string>{"sign"});
  {
    auto s = t->session();
    CHECK_FALSE(s->bool_attribute(t->find_secret_key(copy), CKA_MODIFIABLE));
  }
  CHECK_THROWS_AS(t->unwrap_hmac_key_rsa_oaep(t->find_private_key(rx), wrapped, copy, Bytes{0, 0, 0, 2}), Pkcs11Error);

  for (const auto& label : {master, legacy, copy}) t->destroy_object(t->find_secret_key(label));
  t->destroy_object(t->find_private_key(rx));
  t->destroy_object(t->find_public_key(rx));
  t->destroy_object(t->find_public_key(trusted));
}

TEST_CASE("serial() is the token's CK_TOKEN_INFO serial") {
  auto t = user_token();
  const auto serial = t->serial();
  CHECK(serial.size() == 16);
  CHECK(serial.find(' ') == std::string::npos);
}
