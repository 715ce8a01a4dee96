// The station's SCP11 OCE key on the SoftHSM fixture token (core/pkcs11.h, docs/channel.md): a P-256
// pair whose private half can only derive, and CKM_ECDH1_DERIVE giving the same shared secret as
// keyline's in-process ECDH (core/scp11.h ecdh_p256) computed from the peer's side.
#include <botan/ec_group.h>
#include <botan/ecdh.h>
#include <botan/ecdsa.h>
#include <botan/system_rng.h>
#include <doctest/doctest.h>
#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include "keyline/core/error.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/scp11.h"
#include "testenv.h"

using namespace keyline::core;

namespace {

std::shared_ptr<Pkcs11Token> token() {
  const auto env = keyline::test::hsm_env();
  return Pkcs11Token::open(env.module, env.label, SecureBytes(env.user_pin.begin(), env.user_pin.end()), 4);
}

std::string unique(const std::string& what) {
  static std::atomic<int> n{0};
  return "ecdh-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

struct Peer {
  SecureBytes scalar = SecureBytes(32);
  Bytes point;
};
Peer fresh_peer() {
  Botan::System_RNG rng;
  const Botan::ECDH_PrivateKey key(rng, Botan::EC_Group("secp256r1"));
  Peer p;
  p.point = key.public_value();
  key.private_value().binary_encode(p.scalar.data(), p.scalar.size());
  return p;
}

Bytes token_point(Pkcs11Token& t, const std::string& label) {
  return t.ec_public_key(label)->public_point().encode(Botan::PointGFp::UNCOMPRESSED);
}

}  // namespace

TEST_CASE("ecdh_derive on the token equals ecdh_p256 from the peer's side") {
  auto t = token();
  const std::string label = unique("oce");
  t->generate_ec_p256_ecdh(label, {0x0C, 0xE0});
  const Bytes ours = token_point(*t, label);
  for (int i = 0; i < 3; ++i) {
    const Peer peer = fresh_peer();
    const SecureBytes on_token = t->ecdh_derive(label, peer.point);
    CHECK(on_token.size() == 32);
    CHECK(on_token == scp11::ecdh_p256(peer.scalar, ours));
  }
  // A different peer gives a different secret (the token does not answer a constant).
  CHECK(t->ecdh_derive(label, fresh_peer().point) != t->ecdh_derive(label, fresh_peer().point));
}

TEST_CASE("the ECDH key derives and does nothing else; its secret objects do not stay") {
  auto t = token();
  const std::string label = unique("usage");
  const auto pair = t->generate_ec_p256_ecdh(label, {0x01});
  CHECK(t->key_usages(label) == std::vector<std::string>{"derive"});
  {
    auto s = t->session();
    CHECK(s->bool_attribute(pair.private_key, CKA_DERIVE));
    CHECK(s->bool_attribute(pair.private_key, CKA_SENSITIVE));
    CHECK(s->bool_attribute(pair.private_key, CKA_ALWAYS_SENSITIVE));
    CHECK(s->bool_attribute(pair.private_key, CKA_NEVER_EXTRACTABLE));
    CHECK(s->bool_attribute(pair.private_key, CKA_TOKEN));
    for (CK_ATTRIBUTE_TYPE off :
         {CKA_EXTRACTABLE, CKA_MODIFIABLE, CKA_SIGN, CKA_SIGN_RECOVER, CKA_DECRYPT, CKA_UNWRAP})
      CHECK_FALSE(s->bool_attribute(pair.private_key, off));
    for (CK_ATTRIBUTE_TYPE off : {CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_ENCRYPT, CKA_WRAP, CKA_DERIVE})
      CHECK_FALSE(s->bool_attribute(pair.public_key, off));
    try {
      s->attribute(pair.private_key, CKA_VALUE);
      FAIL("the private scalar was readable");
    } catch (const Pkcs11Error& e) {
      CHECK(e.rv() == CKR_ATTRIBUTE_SENSITIVE);
    }
  }
  const Bytes digest(32, 0x5A);
  CHECK_THROWS_AS(t->sign_digest_raw(pair.private_key, digest.data(), digest.size()), Pkcs11Error);
  CHECK_THROWS_AS(t->generate_ec_p256_ecdh(label, {0x02}), Pkcs11Error);

  // The derived CKK_GENERIC_SECRET objects (no label) are gone after each call.
  auto unlabelled_secrets = [&] { return t->session()->find_objects(CKO_SECRET_KEY, "").size(); };
  const std::size_t before = unlabelled_secrets();
  for (int i = 0; i < 3; ++i) (void)t->ecdh_derive(label, fresh_peer().point);
  CHECK(unlabelled_secrets() == before);
}

TEST_CASE("ecdh_derive refuses a point that is not on P-256 and a missing key") {
  auto t = token();
  const std::string label = unique("refuse");
  t->generate_ec_p256_ecdh(label, {0x03});
  Bytes off = fresh_peer().point;
  off.back() ^= 0x01;
  CHECK_THROWS_AS(t->ecdh_derive(label, off), Pkcs11Error);
  CHECK_THROWS_AS(t->ecdh_derive(label, Bytes(33, 0x02)), Pkcs11Error);
  try {
    t->ecdh_derive(unique("absent"), fresh_peer().point);
    FAIL("derived with a key that does not exist");
  } catch (const Pkcs11Error& e) {
    CHECK(e.code() == ErrorCode::Pkcs11KeyNotFound);
  }
}
