// PKCS#11 adapter against the real SoftHSM fixture token (scripts/hsm.sh through ctest).
#include <doctest/doctest.h>

#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pubkey.h>
#include <botan/x509_ca.h>
#include <botan/x509self.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/pkcs11.h"
#include "testenv.h"

using namespace keyline::core;
namespace fs = std::filesystem;

namespace {

SecureBytes pin_of(const std::string& s) { return SecureBytes(s.begin(), s.end()); }

std::shared_ptr<Pkcs11Token> open_token(std::size_t sessions = 8) {
  const auto env = keyline::test::hsm_env();
  return Pkcs11Token::open(env.module, env.label, pin_of(env.user_pin), sessions);
}

std::string unique(const std::string& what) {
  static std::atomic<int> n{0};
  return "test-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

struct Run {
  int status;
  std::string out;
};
Run run(const std::string& cmd) {
  Run r{-1, {}};
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  r.status = ::pclose(p);
  return r;
}

fs::path temp_dir() {
  char tmpl[] = "/tmp/keyline-p11-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  return tmpl;
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream o(p, std::ios::binary);
  o << s;
}

CK_RV rv_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Pkcs11Error& e) {
    return e.rv();
  }
  return CKR_OK;
}

}  // namespace

TEST_CASE("the token offers the mechanisms the adapter relies on") {
  auto token = open_token();
  const auto m = token->mechanisms();
  for (CK_MECHANISM_TYPE want : {CKM_EC_KEY_PAIR_GEN, CKM_ECDSA, CKM_SHA256_HMAC, CKM_GENERIC_SECRET_KEY_GEN,
                                 CKM_AES_KEY_GEN, CKM_AES_GCM}) {
    CAPTURE(want);
    CHECK(std::find(m.begin(), m.end(), want) != m.end());
  }
}

TEST_CASE("a generated P-256 key is sensitive and never extractable, and signs") {
  auto token = open_token();
  const std::string label = unique("ec");
  const auto pair = token->generate_ec_p256(label, Bytes{0x01, 0x02});
  CHECK(token->find_private_key(label) == pair.private_key);
  CHECK(token->has_private_key(label));
  CHECK_FALSE(token->has_private_key(label + "-absent"));
  CHECK_THROWS_AS(token->generate_ec_p256(label, Bytes{0x03}), Pkcs11Error);
  {
    auto s = token->session();
    CHECK(s->bool_attribute(pair.private_key, CKA_SENSITIVE));
    CHECK_FALSE(s->bool_attribute(pair.private_key, CKA_EXTRACTABLE));
    CHECK(s->bool_attribute(pair.private_key, CKA_NEVER_EXTRACTABLE));
    CHECK(s->bool_attribute(pair.private_key, CKA_ALWAYS_SENSITIVE));
    CHECK(s->bool_attribute(pair.private_key, CKA_TOKEN));
    CHECK(s->bool_attribute(pair.private_key, CKA_PRIVATE));
    CHECK(s->bool_attribute(pair.private_key, CKA_SIGN));
    CHECK(s->attribute(pair.private_key, CKA_ID) == Bytes{0x01, 0x02});
    CHECK(rv_of([&] { s->attribute(pair.private_key, CKA_VALUE); }) == CKR_ATTRIBUTE_SENSITIVE);
    try {
      s->attribute(pair.private_key, CKA_VALUE);
    } catch (const Pkcs11Error& e) {
      CHECK(std::string(e.what()).find("CKR_ATTRIBUTE_SENSITIVE") != std::string::npos);
      CHECK(e.code() == ErrorCode::Pkcs11);
    }
  }

  const auto pub = token->ec_public_key(label);
  CHECK(pub->domain() == Botan::EC_Group("secp256r1"));
  const std::string msg = "device 490154203237518";
  const auto* m = reinterpret_cast<const std::uint8_t*>(msg.data());
  const Bytes raw = token->sign_ecdsa_sha256_raw(pair.private_key, m, msg.size());
  const Bytes der = token->sign_ecdsa_sha256_der(pair.private_key, m, msg.size());
  CHECK(raw.size() == 64);
  CHECK(der[0] == 0x30);
  Botan::PK_Verifier v_raw(*pub, "EMSA1(SHA-256)", Botan::IEEE_1363);
  CHECK(v_raw.verify_message(m, msg.size(), raw.data(), raw.size()));
  Botan::PK_Verifier v_der(*pub, "EMSA1(SHA-256)", Botan::DER_SEQUENCE);
  CHECK(v_der.verify_message(m, msg.size(), der.data(), der.size()));
  const std::string other = msg + "!";
  CHECK_FALSE(v_raw.verify_message(reinterpret_cast<const std::uint8_t*>(other.data()), other.size(), raw.data(),
                                   raw.size()));

  // The Botan view of the same key: PK_Signer through the token, private scalar unreadable.
  Botan::AutoSeeded_RNG rng;
  Pkcs11EcdsaPrivateKey key(token, label);
  CHECK(key.public_key_bits() == pub->public_key_bits());
  CHECK(key.check_key(rng, true));
  CHECK_THROWS_AS(key.private_key_bits(), Pkcs11Error);
  Botan::PK_Signer signer(key, rng, "EMSA1(SHA-256)", Botan::DER_SEQUENCE);
  const auto sig = signer.sign_message(m, msg.size(), rng);
  CHECK(v_der.verify_message(m, msg.size(), sig.data(), sig.size()));

  CHECK_THROWS_AS(Pkcs11EcdsaPrivateKey(token, label + "-absent"), Pkcs11Error);
  try {
    token->find_private_key(label + "-absent");
    FAIL("absent key found");
  } catch (const Pkcs11Error& e) {
    CHECK(e.code() == ErrorCode::Pkcs11KeyNotFound);
  }
}

TEST_CASE("X509_CA with token keys issues a chain that openssl verifies") {
  auto token = open_token();
  Botan::AutoSeeded_RNG rng;
  const std::string root_label = unique("root"), ca_label = unique("devca");
  token->generate_ec_p256(root_label, Bytes{0x10});
  token->generate_ec_p256(ca_label, Bytes{0x11});
  Pkcs11EcdsaPrivateKey root_key(token, root_label), ca_key(token, ca_label);
  const auto root = make_root_certificate(root_key, "keyline HSM Root", "keyline test", rng);
  const auto ca = make_ca_certificate(root, root_key, ca_key, "keyline HSM Device CA", "keyline test", 0, rng);
  Botan::ECDSA_PrivateKey device(rng, Botan::EC_Group("secp256r1"));
  const auto identity = issue_identity_certificate(ca, ca_key, device, Imei::parse("357805023984942"),
                                                   ChipId::parse("00112233445566778899"), kDefaultHwType, rng);
  CHECK_NOTHROW(verify_chain(identity, {ca}, {root}));
  CHECK_NOTHROW(lint_certificate(identity, CertKind::Identity));

  // Botan::X509_CA itself (sign_request path) with the token key.
  Botan::X509_CA x509_ca(ca, ca_key, "SHA-256", rng);
  Botan::X509_Cert_Options opts("keyline csr test");
  Botan::ECDSA_PrivateKey csr_key(rng, Botan::EC_Group("secp256r1"));
  const auto req = Botan::X509::create_cert_req(opts, csr_key, "SHA-256", rng);
  const auto from_csr = x509_ca.sign_request(req, rng, Botan::X509_Time(std::chrono::system_clock::now()),
                                             Botan::X509_Time(kNotAfter, Botan::GENERALIZED_TIME));
  std::unique_ptr<Botan::Public_Key> ca_pub(ca.subject_public_key());
  CHECK(from_csr.check_signature(*ca_pub));

  const auto dir = temp_dir();
  write(dir / "root.pem", to_pem(root));
  write(dir / "ca.pem", to_pem(ca));
  write(dir / "identity.pem", to_pem(identity));
  write(dir / "csr-cert.pem", to_pem(from_csr));
  for (const char* leaf : {"identity.pem", "csr-cert.pem"}) {
    const auto v = run("openssl verify -CAfile " + (dir / "root.pem").string() + " -untrusted " +
                       (dir / "ca.pem").string() + " " + (dir / leaf).string());
    INFO(v.out);
    CHECK(v.status == 0);
    CHECK(v.out.find(": OK") != std::string::npos);
  }
  // openssl's own look at the signature: a DER Ecdsa-Sig-Value, r and s as INTEGERs.
  const auto t = run("openssl x509 -noout -text -in " + (dir / "identity.pem").string());
  CHECK(t.out.find("ecdsa-with-SHA256") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("pkcs11-tool lists the key as sensitive and never extractable") {
  const auto env = keyline::test::hsm_env();
  auto token = open_token();
  const std::string label = unique("listed");
  token->generate_ec_p256(label, Bytes{0x42});
  const auto r = run("pkcs11-tool --module " + env.module + " --token-label " + env.label + " --login --pin " +
                     env.user_pin + " -O");
  INFO(r.out);
  REQUIRE(r.status == 0);
  // Objects come in blocks that start at column 0 ("Private Key Object; EC", "Public Key Object; ...");
  // the public half carries the same label, so pick the private key's block.
  std::vector<std::string> blocks;
  std::size_t pos = 0;
  while (pos < r.out.size()) {
    std::size_t eol = r.out.find('\n', pos);
    if (eol == std::string::npos) eol = r.out.size();
    const std::string line = r.out.substr(pos, eol - pos);
    if (!line.empty() && line[0] != ' ') blocks.emplace_back();
    if (!blocks.empty()) blocks.back() += line + "\n";
    pos = eol + 1;
  }
  std::string block;
  for (const auto& b : blocks)
    if (b.rfind("Private Key Object", 0) == 0 && b.find("label:      " + label + "\n") != std::string::npos) block = b;
  REQUIRE_FALSE(block.empty());
  CHECK(block.find("never extractable") != std::string::npos);
  CHECK(block.find("sensitive") != std::string::npos);
}

TEST_CASE("HMAC derivation inside the token is deterministic per input and differs per IMEI") {
  auto token = open_token();
  const std::string label = unique("master");
  const auto h = token->generate_hmac_key(label);
  {
    auto s = token->session();
    CHECK(s->bool_attribute(h, CKA_SENSITIVE));
    CHECK_FALSE(s->bool_attribute(h, CKA_EXTRACTABLE));
    CHECK(rv_of([&] { s->attribute(h, CKA_VALUE); }) == CKR_ATTRIBUTE_SENSITIVE);
  }
  const Bytes a{'2', '6', '0', '5', '3', '1', '7', '9', '3', '1', '1', '3', '8', '3', '7'};
  const Bytes b{'4', '9', '0', '1', '5', '4', '2', '0', '3', '2', '3', '7', '5', '1', '8'};
  const auto ka1 = token->derive_hmac_sha256(label, a);
  const auto ka2 = token->derive_hmac_sha256(label, a);
  const auto kb = token->derive_hmac_sha256(label, b);
  CHECK(ka1.size() == 32);
  CHECK(ka1 == ka2);
  CHECK(ka1 != kb);
  // Another master key gives other keys for the same IMEI.
  const std::string label2 = unique("master");
  token->generate_hmac_key(label2);
  CHECK(token->derive_hmac_sha256(label2, a) != ka1);
  try {
    token->derive_hmac_sha256(label + "-absent", a);
    FAIL("derivation with an absent key");
  } catch (const Pkcs11Error& e) {
    CHECK(e.code() == ErrorCode::Pkcs11KeyNotFound);
  }
}

TEST_CASE("a secret key replaced under the same label is used, not the remembered handle") {
  auto token = open_token();
  const std::string label = unique("rekey");
  const auto first = token->generate_hmac_key(label);
  const Bytes a{'3', '5', '7', '8', '0', '5', '0', '2', '0', '0', '0', '0', '0', '1', '7'};
  const auto k1 = token->derive_hmac_sha256(label, a);  // the handle is remembered from here on
  // Another holder of the token (as a second station process would be) replaces the key.
  auto other = open_token();
  other->destroy_object(first);
  other->generate_hmac_key(label);
  const auto k2 = token->derive_hmac_sha256(label, a);
  CHECK(k2.size() == 32);
  CHECK(k2 != k1);
  CHECK(token->derive_hmac_sha256(label, a) == k2);
}

TEST_CASE("wrap and unwrap round-trip under a token AES key; tampering is detected") {
  auto token = open_token();
  const std::string label = unique("wrap");
  const auto h = token->generate_aes_key(label);
  {
    auto s = token->session();
    CHECK(s->bool_attribute(h, CKA_NEVER_EXTRACTABLE));
    CHECK(rv_of([&] { s->attribute(h, CKA_VALUE); }) == CKR_ATTRIBUTE_SENSITIVE);
  }
  Botan::AutoSeeded_RNG rng;
  for (std::size_t len : {0, 1, 32, 121, 1000}) {
    CAPTURE(len);
    SecureBytes plain(len);
    rng.randomize(plain.data(), plain.size());
    const Bytes aad{'r', 'o', 'w', '1'};
    const Bytes w1 = token->wrap_data(label, plain, aad);
    const Bytes w2 = token->wrap_data(label, plain, aad);
    CHECK(w1.size() == len + 28);
    CHECK(w1 != w2);  // fresh nonce each time
    CHECK(token->unwrap_data(label, w1, aad) == plain);
    CHECK(token->unwrap_data(label, w2, aad) == plain);
    Bytes bad = w1;
    bad[bad.size() / 2] ^= 0x01;
    CHECK_THROWS_AS(token->unwrap_data(label, bad, aad), CryptoError);
    // The associated data binds the blob: another row's does not open it, and none at all is refused.
    CHECK_THROWS_AS(token->unwrap_data(label, w1, Bytes{'r', 'o', 'w', '2'}), CryptoError);
    CHECK_THROWS_AS(token->wrap_data(label, plain, {}), CryptoError);
  }
  const std::string other = unique("wrap");
  token->generate_aes_key(other);
  SecureBytes secret(48, 0x5A);
  const Bytes aad{'x'};
  CHECK_THROWS_AS(token->unwrap_data(other, token->wrap_data(label, secret, aad), aad), CryptoError);
  CHECK_THROWS_AS(token->unwrap_data(label, Bytes(10), aad), CryptoError);
}

TEST_CASE("8 threads sign concurrently through a pool of 4 sessions") {
  auto token = open_token(4);
  const std::string label = unique("mt");
  token->generate_ec_p256(label, Bytes{0x77});
  auto key = std::make_shared<Pkcs11EcdsaPrivateKey>(token, label);
  std::atomic<int> good{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      try {
        Botan::AutoSeeded_RNG rng;
        Botan::PK_Signer signer(*key, rng, "EMSA1(SHA-256)", Botan::DER_SEQUENCE);
        Botan::PK_Verifier verifier(*key, "EMSA1(SHA-256)", Botan::DER_SEQUENCE);
        for (int i = 0; i < 100; ++i) {
          const std::string msg = "thread " + std::to_string(t) + " message " + std::to_string(i);
          const auto* m = reinterpret_cast<const std::uint8_t*>(msg.data());
          const auto sig = signer.sign_message(m, msg.size(), rng);
          (verifier.verify_message(m, msg.size(), sig.data(), sig.size()) ? good : bad)++;
        }
      } catch (const std::exception&) {
        bad++;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(good == 800);
  CHECK(bad == 0);
}

TEST_CASE("a wrong PIN, an unknown token and a bad module path give typed errors") {
  const auto env = keyline::test::hsm_env();
  // No other Pkcs11Token is alive here: login state is per application, so a logged-in token in
  // this process would turn C_Login into CKR_USER_ALREADY_LOGGED_IN.
  try {
    Pkcs11Token::open(env.module, env.label, pin_of("0000wrong0000"));
    FAIL("wrong PIN accepted");
  } catch (const Pkcs11Error& e) {
    CHECK(e.code() == ErrorCode::Pkcs11LoginFailed);
    CHECK(e.rv() == CKR_PIN_INCORRECT);
    CHECK(std::string(e.what()).find("0000wrong0000") == std::string::npos);
    CHECK(std::string(e.what()).find("CKR_PIN_INCORRECT") != std::string::npos);
  }
  try {
    Pkcs11Token::open(env.module, "no-such-token", pin_of(env.user_pin));
    FAIL("unknown token found");
  } catch (const Pkcs11Error& e) {
    CHECK(e.code() == ErrorCode::Pkcs11NoToken);
  }
  try {
    Pkcs11Token::open("/nonexistent/libpkcs11.so", env.label, pin_of(env.user_pin));
    FAIL("bad module loaded");
  } catch (const Pkcs11Error& e) {
    CHECK(e.code() == ErrorCode::Pkcs11);
  }
  // The right PIN still works afterwards (the wrong attempt did not lock the token).
  CHECK_NOTHROW(open_token());
  CHECK(pkcs11_rv_name(CKR_ATTRIBUTE_SENSITIVE) == "CKR_ATTRIBUTE_SENSITIVE");
  CHECK(pkcs11_rv_name(0x8000ABCDUL) == "CKR_0x8000ABCD");
}

// The attacker review: with a token directory others can write, a second token of the line's label
// could be planted; find_slot took the first. Two SoftHSM tokens of one label in a directory of this
// test's own (SOFTHSM2_CONF set before the module is first loaded: ctest runs each case alone).
TEST_CASE("a token label found on two tokens is refused, naming the label") {
  const auto env = keyline::test::hsm_env();
  const fs::path dir = temp_dir();
  fs::create_directories(dir / "tokens");
  write(dir / "softhsm2.conf", "directories.tokendir = " + (dir / "tokens").string() +
                                   "\nobjectstore.backend = file\nlog.level = ERROR\n");
  const std::string conf = "SOFTHSM2_CONF=" + (dir / "softhsm2.conf").string();
  const std::string init = conf + " softhsm2-util --init-token --free --so-pin 87654321 --pin 12345678 --label ";
  REQUIRE(run(init + "keyline-dup").status == 0);
  REQUIRE(run(init + "keyline-one").status == 0);
  ::setenv("SOFTHSM2_CONF", (dir / "softhsm2.conf").c_str(), 1);
  struct Restore {  // the fixture's token for the cases after this one, even when a REQUIRE fails
    std::string conf;
    fs::path dir;
    ~Restore() {
      ::setenv("SOFTHSM2_CONF", conf.c_str(), 1);
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } restore{env.conf, dir};
  {
    Pkcs11Module module(env.module);
    CHECK_NOTHROW(module.find_slot("keyline-one"));
    REQUIRE(run(init + "keyline-dup").status == 0);  // the planted one
  }
  try {
    Pkcs11Token::open(env.module, "keyline-dup", pin_of("12345678"));
    FAIL("a label on two tokens was opened");
  } catch (const Pkcs11Error& e) {
    CHECK(e.code() == ErrorCode::Pkcs11DuplicateToken);
    CHECK(std::string(e.what()).find("2 initialized tokens labelled 'keyline-dup'") != std::string::npos);
    CHECK(exit_code_for(e.code()) == exit_code::hsm);
  }
}
