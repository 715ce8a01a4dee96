// StationAuthority (backupdb/src/station_auth.h): only a station-profile certificate signed by a
// configured station issuer and valid at `now` may publish. Every refusal below is a certificate the
// service CA (or a look-alike) could hand out, which a check of "issued by the CA" alone let through.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>
#include <vector>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pubkey.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "station_auth.h"

using namespace keyline;
using keyline::backupdb::StationAuthority;
using keyline::backupdb::StationCheck;
using Clock = std::chrono::system_clock;

namespace {

struct Pki {
  Botan::AutoSeeded_RNG rng;
  Botan::EC_Group p256{"secp256r1"};
  Botan::ECDSA_PrivateKey root_key{rng, p256}, svc_key{rng, p256}, other_key{rng, p256}, leaf_key{rng, p256};
  Botan::X509_Certificate root = core::make_root_certificate(root_key, "Test Root", "keyline test", rng);
  Botan::X509_Certificate svc =
      core::make_ca_certificate(root, root_key, svc_key, "Test Service CA", "keyline test", 0, rng);
  Botan::X509_Certificate other = core::make_root_certificate(other_key, "Other CA", "elsewhere", rng);
  // A CA whose DN is the service CA's but whose key is not: a forged issuer.
  Botan::ECDSA_PrivateKey forger_key{rng, p256};
  Botan::X509_Certificate station = core::issue_station_certificate(svc, svc_key, leaf_key, "station-7", rng);
};

Pki& pki() {
  static Pki p;
  return p;
}

StationAuthority authority() { return StationAuthority({pki().svc}); }

std::vector<std::uint8_t> der(const Botan::X509_Certificate& c) { return c.BER_encode(); }

// What a CA could sign outside the profile: the station profile's extensions with one change.
struct Draft {
  std::vector<Botan::OID> eku{Botan::OID("1.3.6.1.5.5.7.3.2")};
  std::vector<Botan::OID> policies{Botan::OID(core::kStationPolicy)};
  std::string cn = "station-7";
  std::string ou = core::kStationUnit;
  Clock::time_point not_before = Clock::now() - std::chrono::minutes(1);
  Clock::time_point not_after = Clock::now() + std::chrono::hours(24 * 365);
};

Botan::X509_Certificate sign(const Draft& d, const Botan::X509_Certificate& issuer, const Botan::Private_Key& key) {
  auto& p = pki();
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
  ext.add(new Botan::Cert_Extension::Key_Usage(Botan::DIGITAL_SIGNATURE), true);
  if (!d.eku.empty()) ext.add(new Botan::Cert_Extension::Extended_Key_Usage(d.eku), false);
  if (!d.policies.empty()) ext.add(new Botan::Cert_Extension::Certificate_Policies(d.policies), false);
  ext.add(new Botan::Cert_Extension::Subject_Key_ID(p.leaf_key.subject_public_key(), "SHA-256"), false);
  ext.add(new Botan::Cert_Extension::Authority_Key_ID(issuer.subject_key_id()), false);
  Botan::X509_DN dn;
  if (!d.ou.empty()) dn.add_attribute("X520.OrganizationalUnit", d.ou);
  dn.add_attribute("X520.CommonName", d.cn);
  Botan::AlgorithmIdentifier algo;
  std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(key, p.rng, "SHA-256", algo));
  return Botan::X509_CA::make_cert(signer.get(), p.rng, algo, p.leaf_key.subject_public_key(),
                                   Botan::X509_Time(d.not_before), Botan::X509_Time(d.not_after),
                                   issuer.subject_dn(), dn, ext);
}

Botan::X509_Certificate sign(const Draft& d) { return sign(d, pki().svc, pki().svc_key); }

void refused(const StationCheck& c, int status = 403) {
  CHECK_FALSE(c.allowed);
  CHECK(c.status == status);
  CHECK_FALSE(c.slug.empty());
  CHECK(c.station_id.empty());
  CHECK_FALSE(c.log_detail.empty());
  // Generic on the wire: no DN, no station id, no library text.
  CHECK(c.detail.find("CN=") == std::string::npos);
  CHECK(c.detail.find("station-7") == std::string::npos);
  CHECK(c.detail.find("Botan") == std::string::npos);
}

}  // namespace

TEST_CASE("a real station certificate of the station issuer is allowed, with its station id") {
  // The baseline the refusals below are measured against: it must pass, so they cannot pass vacuously.
  const auto c = authority().check(der(pki().station), Clock::now());
  CHECK(c.allowed);
  CHECK(c.station_id == "station-7");
  CHECK(c.slug.empty());
  CHECK(authority().check(der(sign(Draft{})), Clock::now()).allowed);
}

TEST_CASE("a server certificate (serverAuth) of the same CA may not publish") {
  auto& p = pki();
  Botan::ECDSA_PrivateKey k(p.rng, p.p256);
  const auto srv = core::issue_tls_certificate(p.svc, p.svc_key, k, "keyline-kps", {"127.0.0.1", "localhost"},
                                               core::TlsRole::Server, p.rng);
  refused(authority().check(der(srv), Clock::now()));
  Draft d;  // even with the station policy and OU, serverAuth is refused
  d.eku = {Botan::OID("1.3.6.1.5.5.7.3.1")};
  refused(authority().check(der(sign(d)), Clock::now()));
}

TEST_CASE("a clientAuth certificate of the same CA without the station policy is refused") {
  Draft d;
  d.policies.clear();
  refused(authority().check(der(sign(d)), Clock::now()));
  d.policies = {Botan::OID("1.3.6.1.4.1.59999.2.99")};
  refused(authority().check(der(sign(d)), Clock::now()));
}

TEST_CASE("both EKUs (clientAuth and serverAuth), or none, are refused") {
  Draft d;
  d.eku = {Botan::OID("1.3.6.1.5.5.7.3.2"), Botan::OID("1.3.6.1.5.5.7.3.1")};
  refused(authority().check(der(sign(d)), Clock::now()));
  d.eku.clear();
  refused(authority().check(der(sign(d)), Clock::now()));
}

TEST_CASE("a station id that breaks the --station-id rule, or no station OU, is refused") {
  for (const std::string& cn : std::vector<std::string>{"station 7", "", "st/../x", std::string(65, 'a')}) {
    Draft d;
    d.cn = cn;
    refused(authority().check(der(sign(d)), Clock::now()));
  }
  Draft d;
  d.ou.clear();
  refused(authority().check(der(sign(d)), Clock::now()));
  // The subject is the client's text: it reaches the log as one bounded line.
  Draft evil;
  evil.cn = "x\nFORGED log line " + std::string(400, 'y');
  const auto c = authority().check(der(sign(evil)), Clock::now());
  refused(c);
  CHECK(c.log_detail.find('\n') == std::string::npos);
  CHECK(c.log_detail.size() < 400);
}

TEST_CASE("expired and not yet valid station certificates are refused") {
  const auto now = Clock::now();
  Draft old;
  old.not_before = now - std::chrono::hours(24 * 800);
  old.not_after = now - std::chrono::hours(24);
  const auto c = authority().check(der(sign(old)), now);
  refused(c);
  CHECK(c.slug == "certificate-expired");
  Draft future;
  future.not_before = now + std::chrono::hours(24);
  future.not_after = now + std::chrono::hours(24 * 30);
  refused(authority().check(der(sign(future)), now));
}

TEST_CASE("another CA's station certificate, and one under a forged issuer of the same name, are refused") {
  auto& p = pki();
  refused(authority().check(der(sign(Draft{}, p.other, p.other_key)), Clock::now()));
  refused(authority().check(der(sign(Draft{}, p.svc, p.forger_key)), Clock::now()));
  // Listed as an issuer, the other CA's station certificate passes: the refusal was the issuer's.
  CHECK(StationAuthority({p.svc, p.other}).check(der(sign(Draft{}, p.other, p.other_key)), Clock::now()).allowed);
}

TEST_CASE("garbage, truncated and empty DER are refused") {
  const auto good = der(pki().station);
  refused(authority().check({}, Clock::now()));
  refused(authority().check({0x30, 0x03, 0x02, 0x01, 0x00}, Clock::now()));
  refused(authority().check(std::vector<std::uint8_t>(good.begin(), good.begin() + good.size() / 2), Clock::now()));
  auto flipped = good;
  flipped[flipped.size() - 5] ^= 0x01;  // inside the signature
  refused(authority().check(flipped, Clock::now()));
}

TEST_CASE("a remembered certificate is refused once it expires, and before it is valid") {
  const auto auth = authority();
  const auto d = der(pki().station);
  const auto now = Clock::now();
  REQUIRE(auth.check(d, now).allowed);
  REQUIRE(auth.check(d, now).allowed);  // from memory
  const auto after = Clock::time_point(pki().station.not_after().to_std_timepoint()) + std::chrono::seconds(1);
  const auto c = auth.check(d, after);
  refused(c);
  CHECK(c.slug == "certificate-expired");
  refused(auth.check(d, now - std::chrono::hours(24)));
  CHECK(auth.check(d, now).allowed);
}

TEST_CASE("a refusal is remembered without becoming a permission, and 8 threads share the authority") {
  const auto auth = authority();
  Draft d;
  d.policies.clear();
  const auto bad = der(sign(d));
  const auto good = der(pki().station);
  std::atomic<int> allowed{0}, refusals{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        if (auth.check(good, Clock::now()).allowed) ++allowed;
        if (!auth.check(bad, Clock::now()).allowed) ++refusals;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(allowed == 400);
  CHECK(refusals == 400);
}

TEST_CASE("more distinct certificates than the memory holds: each still gets the right answer") {
  const auto auth = authority();
  auto& p = pki();
  const auto first = der(p.station);
  REQUIRE(auth.check(first, Clock::now()).allowed);
  std::vector<std::uint8_t> last;
  for (std::size_t i = 0; i < StationAuthority::kMaxRefused + 8; ++i) {
    Draft d;
    d.policies.clear();
    d.cn = "junk-" + std::to_string(i);
    last = der(sign(d));
    CHECK_FALSE(auth.check(last, Clock::now()).allowed);
  }
  CHECK(auth.check(first, Clock::now()).allowed);
  CHECK_FALSE(auth.check(last, Clock::now()).allowed);
}

TEST_CASE("load_station_authority: a CA file works, a missing file, no certificate or a leaf is ConfigError") {
  auto& p = pki();
  const auto dir = std::filesystem::temp_directory_path() / ("station-auth-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return (dir / name).string();
  };
  const auto auth = backupdb::load_station_authority(write("ca.pem", core::to_pem(p.svc)));
  CHECK(auth.check(der(p.station), Clock::now()).allowed);
  auto config_error = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const core::ConfigError&) {
      return true;
    }
    return false;
  };
  CHECK(config_error([&] { backupdb::load_station_authority((dir / "missing.pem").string()); }));
  CHECK(config_error([&] { backupdb::load_station_authority(write("empty.pem", "nothing here\n")); }));
  CHECK(config_error([&] { backupdb::load_station_authority(write("leaf.pem", core::to_pem(p.station))); }));
  std::filesystem::remove_all(dir);
}
