// The transparency log key on the SoftHSM fixture token (core/token_note_signer.h,
// docs/transparency.md): generated there, never readable, signing checkpoints of its own origin only,
// and the signatures are RFC 8032 Ed25519 for keyline's verifier and for OpenSSL alike.
#include <doctest/doctest.h>

#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "keyline/core/checkpoint.h"
#include "keyline/core/error.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/signed_note.h"
#include "keyline/core/token_note_signer.h"
#include "testenv.h"

using namespace keyline::core;

namespace {

std::shared_ptr<Pkcs11Token> token() {
  const auto env = keyline::test::hsm_env();
  return Pkcs11Token::open(env.module, env.label, SecureBytes(env.user_pin.begin(), env.user_pin.end()), 4);
}

std::string unique(const std::string& what) {
  static std::atomic<int> n{0};
  return "ed25519-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

tlog::Checkpoint checkpoint(const std::string& origin) {
  tlog::Checkpoint c;
  c.origin = origin;
  c.size = 7;
  for (std::size_t i = 0; i < c.root.size(); ++i) c.root[i] = static_cast<std::uint8_t>(i * 7 + 1);
  return c;
}

void write_file(const std::filesystem::path& p, const std::string& data) {
  std::ofstream(p, std::ios::binary) << data;
}

int run(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

// `openssl pkeyutl -verify -rawin` (pure Ed25519 over the whole message) under the token's public key
// as an RFC 8410 SubjectPublicKeyInfo.
bool openssl_verifies(const Bytes& pub, const std::string& text, const Bytes& sig) {
  const auto dir = std::filesystem::temp_directory_path() / unique("openssl");
  std::filesystem::create_directories(dir);
  const std::string spki_prefix("\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00", 12);
  write_file(dir / "pub.der", spki_prefix + std::string(pub.begin(), pub.end()));
  write_file(dir / "msg", text);
  write_file(dir / "sig", std::string(sig.begin(), sig.end()));
  const int rc = run("openssl pkeyutl -verify -rawin -pubin -keyform DER -inkey " + (dir / "pub.der").string() +
                     " -in " + (dir / "msg").string() + " -sigfile " + (dir / "sig").string());
  std::filesystem::remove_all(dir);
  return rc == 0;
}

// The signature of the line "— <name> <base64>" of a note signed by one key.
Bytes only_signature(const std::string& signed_note) {
  const auto n = note::parse_note(signed_note);
  REQUIRE(n.signatures.size() == 1);
  return n.signatures.front().signature;
}

}  // namespace

TEST_CASE("the log key is made on the token: sensitive, never extractable, sign only; the public half verify only") {
  auto t = token();
  const auto label = unique("attrs");
  const auto pair = t->generate_ed25519(label, Bytes{0x18});
  auto s = t->session();
  CHECK(s->bool_attribute(pair.private_key, CKA_SENSITIVE));
  CHECK(s->bool_attribute(pair.private_key, CKA_ALWAYS_SENSITIVE));
  CHECK_FALSE(s->bool_attribute(pair.private_key, CKA_EXTRACTABLE));
  CHECK(s->bool_attribute(pair.private_key, CKA_NEVER_EXTRACTABLE));
  CHECK(s->bool_attribute(pair.private_key, CKA_PRIVATE));
  CHECK(s->bool_attribute(pair.private_key, CKA_TOKEN));
  CHECK_FALSE(s->bool_attribute(pair.private_key, CKA_MODIFIABLE));
  CHECK(s->bool_attribute(pair.private_key, CKA_SIGN));
  for (const CK_ATTRIBUTE_TYPE off : {CKA_SIGN_RECOVER, CKA_DECRYPT, CKA_UNWRAP, CKA_DERIVE})
    CHECK_FALSE(s->bool_attribute(pair.private_key, off));
  CHECK(s->bool_attribute(pair.public_key, CKA_VERIFY));
  for (const CK_ATTRIBUTE_TYPE off : {CKA_VERIFY_RECOVER, CKA_ENCRYPT, CKA_WRAP, CKA_DERIVE})
    CHECK_FALSE(s->bool_attribute(pair.public_key, off));
  CHECK(Bytes(s->attribute(pair.private_key, CKA_KEY_TYPE)) == s->attribute(pair.public_key, CKA_KEY_TYPE));
  CK_KEY_TYPE kt = 0;
  const Bytes kt_bytes = s->attribute(pair.private_key, CKA_KEY_TYPE);
  REQUIRE(kt_bytes.size() == sizeof kt);
  std::memcpy(&kt, kt_bytes.data(), sizeof kt);
  CHECK(kt == CKK_EC_EDWARDS);
  // SoftHSM 2.6.1 keeps the RFC 8410 OID (1.3.101.112) it was given.
  CHECK(s->attribute(pair.public_key, CKA_EC_PARAMS) == Bytes{0x06, 0x03, 0x2B, 0x65, 0x70});
  try {
    (void)s->attribute(pair.private_key, CKA_VALUE);
    FAIL("CKA_VALUE of the log key was readable");
  } catch (const Pkcs11Error& e) {
    CHECK(e.rv() == CKR_ATTRIBUTE_SENSITIVE);
  }
  CHECK(t->key_usages(label) == std::vector<std::string>{"sign", "verify"});
  CHECK_THROWS_AS(t->generate_ed25519(label, Bytes{0x18}), Pkcs11Error);  // one key per label
}

TEST_CASE("a checkpoint signed on the token opens with keyline's verifier and verifies with openssl") {
  auto t = token();
  const auto label = unique("sign");
  t->generate_ed25519(label, Bytes{0x18});
  const std::string origin = "keyline.test/log/" + label;
  const note::TokenNoteSigner signer(t, label, origin);
  REQUIRE(signer.public_key().size() == 32);

  const auto c = checkpoint(origin);
  const std::string signed_note = tlog::sign_checkpoint(c, {&signer});
  const auto verifier = note::Ed25519Verifier::parse(signer.verifier_key());
  CHECK(verifier.key_id() == signer.key_id());
  const auto opened = tlog::open_checkpoint(signed_note, verifier, origin);
  CHECK(opened.checkpoint == c);
  REQUIRE(opened.note.verified.size() == 1);

  const std::string text = tlog::checkpoint_text(c);
  const Bytes sig = only_signature(signed_note);
  CHECK(sig.size() == 64);
  CHECK(openssl_verifies(signer.public_key(), text, sig));
  // The openssl check is not vacuous: one flipped bit of the text or of the signature fails it.
  std::string other = text;
  other[0] ^= 0x01;
  CHECK_FALSE(openssl_verifies(signer.public_key(), other, sig));
  Bytes bad = sig;
  bad[10] ^= 0x40;
  CHECK_FALSE(openssl_verifies(signer.public_key(), text, bad));

  // Another key with the same name does not open it.
  const auto stranger = note::Ed25519Signer::generate(origin);
  CHECK_THROWS_AS(tlog::open_checkpoint(signed_note, note::Ed25519Verifier::parse(stranger.verifier_key()), origin),
                  CryptoError);
}

TEST_CASE("the token signer refuses a note that is not a checkpoint of its own origin") {
  auto t = token();
  const auto label = unique("refuse");
  t->generate_ed25519(label, Bytes{0x18});
  const std::string origin = "keyline.test/log/" + label;
  const note::TokenNoteSigner signer(t, label, origin);

  // A checkpoint of another log: the key name would not be the origin.
  try {
    (void)tlog::sign_checkpoint(checkpoint("keyline.test/other-log"), {&signer});
    FAIL("signed a checkpoint of another origin");
  } catch (const FormatError& e) {
    CHECK(e.code() == ErrorCode::BadCheckpoint);
  }
  // Any other note text (the log key is no general signing oracle).
  CHECK_THROWS_AS(note::sign_note("hello\n", {&signer}), FormatError);
  CHECK_THROWS_AS((void)signer.sign(origin + "\n"), FormatError);
  // The origin as a prefix of a longer first line is another origin.
  CHECK_THROWS_AS((void)signer.sign(tlog::checkpoint_text(checkpoint(origin + "x"))), FormatError);
  // And its own origin still signs.
  CHECK(signer.sign(tlog::checkpoint_text(checkpoint(origin))).size() == 64);
}

TEST_CASE("a key made by pkcs11-tool (CKA_EC_PARAMS the PrintableString \"edwards25519\") signs too") {
  const auto env = keyline::test::hsm_env();
  const auto label = unique("tool");
  REQUIRE(run("pkcs11-tool --module " + env.module + " --token-label " + env.label + " --login --pin " + env.user_pin +
              " --keypairgen --key-type EC:edwards25519 --label " + label + " --id 1801") == 0);
  auto t = token();
  {
    auto s = t->session();
    const auto pub = s->find_objects(CKO_PUBLIC_KEY, label);
    REQUIRE(pub.size() == 1);
    CHECK(s->attribute(pub.front(), CKA_EC_PARAMS) ==
          Bytes{0x13, 0x0C, 'e', 'd', 'w', 'a', 'r', 'd', 's', '2', '5', '5', '1', '9'});
  }
  const std::string origin = "keyline.test/log/" + label;
  const note::TokenNoteSigner signer(t, label, origin);
  const auto c = checkpoint(origin);
  const auto signed_note = tlog::sign_checkpoint(c, {&signer});
  CHECK(tlog::open_checkpoint(signed_note, note::Ed25519Verifier::parse(signer.verifier_key()), origin).checkpoint == c);
}

TEST_CASE("a P-256 key is not taken for an Ed25519 log key") {
  auto t = token();
  const auto label = unique("p256");
  t->generate_ec_p256(label, Bytes{0x18});
  CHECK_THROWS_AS(t->ed25519_public_key(label), Pkcs11Error);
  CHECK_THROWS_AS(note::TokenNoteSigner(t, label, "keyline.test/log"), Pkcs11Error);
  CHECK_THROWS_AS(note::TokenNoteSigner(t, unique("absent"), "keyline.test/log"), Pkcs11Error);
}

TEST_CASE("a private half that does not match the public half under its label never yields a signature") {
  // The public object labelled `label` is replaced by another Ed25519 public key (as on a token that
  // was tampered with, or after a botched key roll): the token signs, but the signature does not
  // verify under the key the signer announces, so sign() throws instead of returning it.
  const auto env = keyline::test::hsm_env();
  auto t = token();
  const auto label = unique("mismatch");
  const auto pair = t->generate_ed25519(label, Bytes{0x18});
  t->destroy_object(pair.public_key);
  const auto other = note::Ed25519Signer::generate("x");
  {
    // The module is already loaded and initialized by the token; its function list works on the
    // token's sessions (pkcs11-tool 0.23 cannot import an Ed25519 public key).
    void* dl = ::dlopen(env.module.c_str(), RTLD_NOW | RTLD_NOLOAD);
    REQUIRE(dl != nullptr);
    auto get_list = reinterpret_cast<CK_C_GetFunctionList>(::dlsym(dl, "C_GetFunctionList"));
    REQUIRE(static_cast<bool>(get_list));
    CK_FUNCTION_LIST_PTR fn = nullptr;
    REQUIRE(get_list(&fn) == CKR_OK);
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_KEY_TYPE kt = CKK_EC_EDWARDS;
    CK_BBOOL yes = CK_TRUE;
    CK_BYTE params[] = {0x06, 0x03, 0x2B, 0x65, 0x70};
    Bytes point{0x04, 0x20};
    point.insert(point.end(), other.public_key().begin(), other.public_key().end());
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof cls},     {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_TOKEN, &yes, sizeof yes},     {CKA_VERIFY, &yes, sizeof yes},
        {CKA_EC_PARAMS, params, sizeof params}, {CKA_EC_POINT, point.data(), point.size()},
        {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
    };
    auto s = t->session();
    CK_OBJECT_HANDLE h = 0;
    REQUIRE(fn->C_CreateObject(s->handle(), tmpl, std::size(tmpl), &h) == CKR_OK);
    ::dlclose(dl);
  }
  const std::string origin = "keyline.test/log/" + label;
  const note::TokenNoteSigner signer(t, label, origin);
  REQUIRE(signer.public_key() == other.public_key());
  CHECK_THROWS_AS((void)signer.sign(tlog::checkpoint_text(checkpoint(origin))), CryptoError);
}
