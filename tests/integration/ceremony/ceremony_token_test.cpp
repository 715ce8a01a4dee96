// keyline::ceremony against a SoftHSM token made for this binary only (one token per process: SoftHSM
// reads SOFTHSM2_CONF once, at the module's C_Initialize).
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>

#include "keyline/ceremony/ceremony.h"
#include "keyline/ceremony/errors.h"
#include "keyline/ceremony/log.h"
#include "keyline/ceremony/profiles.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/csr.h"
#include "keyline/core/pkcs11.h"
#include "testenv.h"

using namespace keyline;
namespace fs = std::filesystem;

namespace {

struct RootToken {
  fs::path dir;
  ceremony::CeremonyOptions opt;
  RootToken() {
    dir = fs::path(test::testenv_dir()) / ("ceremony-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    const std::string cmd = test::source_dir() + "/scripts/hsm.sh init " + dir.string() + " keyline-root >/dev/null";
    REQUIRE(std::system(cmd.c_str()) == 0);
    ::setenv("SOFTHSM2_CONF", (dir / "softhsm2.conf").c_str(), 1);
    opt.dir = (dir / "cer").string();
    opt.hsm_module = test::read_file((dir / "module").string());
    opt.pin_file = (dir / "user.pin").string();
  }
  ~RootToken() { fs::remove_all(dir); }
  std::shared_ptr<core::Pkcs11Token> open() const {
    const auto pin = test::read_file(opt.pin_file);
    return core::Pkcs11Token::open(opt.hsm_module, "keyline-root", core::SecureBytes(pin.begin(), pin.end()), 1);
  }
};

RootToken& token() {
  static RootToken t;
  return t;
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("init-root on a real token: the root key is sensitive, never extractable, sign only") {
  auto& t = token();
  std::ostringstream out;
  REQUIRE(ceremony::init_root(t.opt, {"Integration Root", "keyline test", 3650}, out) == 0);
  auto tok = t.open();
  CHECK(tok->key_usages("keyline-root") == std::vector<std::string>{"sign", "verify"});
  auto s = tok->session();
  const auto keys = s->find_objects(CKO_PRIVATE_KEY, "keyline-root");
  REQUIRE(keys.size() == 1);
  const auto k = keys.front();
  CHECK(s->bool_attribute(k, CKA_SENSITIVE));
  CHECK(s->bool_attribute(k, CKA_ALWAYS_SENSITIVE));
  CHECK(s->bool_attribute(k, CKA_NEVER_EXTRACTABLE));
  CHECK_FALSE(s->bool_attribute(k, CKA_EXTRACTABLE));
  CHECK_FALSE(s->bool_attribute(k, CKA_MODIFIABLE));
  CHECK(s->bool_attribute(k, CKA_SIGN));
  for (const auto a : {CKA_DECRYPT, CKA_UNWRAP, CKA_DERIVE, CKA_SIGN_RECOVER}) CHECK_FALSE(s->bool_attribute(k, a));
  try {
    s->attribute(k, CKA_VALUE);
    FAIL("the root key's value was readable");
  } catch (const core::Pkcs11Error& e) {
    CHECK(e.rv() == CKR_ATTRIBUTE_SENSITIVE);
  }
  CHECK(s->find_objects(CKO_SECRET_KEY, "keyline-root").empty());
}

TEST_CASE("the token-signed log verifies against root.pem, and a sign adds intent and outcome") {
  auto& t = token();
  Botan::AutoSeeded_RNG rng;
  Botan::ECDSA_PrivateKey dca(rng, Botan::EC_Group("secp256r1"));
  Botan::X509_DN subject;
  subject.add_attribute("X520.CommonName", "Integration Device CA");
  const auto csr_path = (t.dir / "dca.csr").string();
  std::ofstream(csr_path) << core::make_csr_pem(dca, subject, rng);
  std::ostringstream out;
  REQUIRE(ceremony::sign(t.opt, {csr_path, "device-ca", 0, (t.dir / "dca.pem").string()}, out) == 0);
  const auto root = core::load_certificates_pem(ceremony::root_cert_path(t.opt.dir)).front();
  const auto issued = core::load_certificates_pem((t.dir / "dca.pem").string()).front();
  CHECK_NOTHROW(core::verify_chain(issued, {}, {root}));
  std::unique_ptr<Botan::Public_Key> pub(root.subject_public_key());
  const auto r = ceremony::verify_log_text(ceremony::read_log_file(ceremony::log_path(t.opt.dir)), *pub);
  CHECK(r.findings.empty());
  CHECK(r.warnings.empty());
  CHECK(r.lines == 4);
}

TEST_CASE("a root.pem that is not the token's key: nothing signed, nothing logged (7003)") {
  auto& t = token();
  const auto root_path = ceremony::root_cert_path(t.opt.dir);
  const auto log_before = slurp(ceremony::log_path(t.opt.dir));
  const auto genuine = slurp(root_path);
  Botan::AutoSeeded_RNG rng;
  Botan::ECDSA_PrivateKey other(rng, Botan::EC_Group("secp256r1"));
  fs::remove(root_path);
  std::ofstream(root_path) << core::to_pem(ceremony::make_root(other, "Integration Root", "keyline test", 3650, rng));
  std::ostringstream out;
  try {
    ceremony::sign(t.opt, {(t.dir / "dca.csr").string(), "device-ca", 0, (t.dir / "dca2.pem").string()}, out);
    FAIL("signed under a root.pem that is not the token's");
  } catch (const core::Error& e) {
    CHECK(e.code() == ceremony::errc::RootMismatch);
  }
  CHECK_FALSE(fs::exists(t.dir / "dca2.pem"));
  CHECK(slurp(ceremony::log_path(t.opt.dir)) == log_before);
  fs::remove(root_path);
  std::ofstream(root_path) << genuine;
}

TEST_CASE("a second init-root is refused and leaves one root key on the token (7001)") {
  auto& t = token();
  std::ostringstream out;
  try {
    ceremony::init_root(t.opt, {"Second Root", "", 10}, out);
    FAIL("a second root was made");
  } catch (const core::Error& e) {
    CHECK(e.code() == ceremony::errc::RootExists);
  }
  auto s = t.open()->session();
  CHECK(s->find_objects(CKO_PRIVATE_KEY, "keyline-root").size() == 1);
}
