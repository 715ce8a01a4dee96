// Device request signatures (core/device_auth.h): what the KPS accepts and every way it refuses.
#include <doctest/doctest.h>

#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/ecdsa.h>

#include <map>

#include "keyline/core/device_auth.h"
#include "keyline/core/error.h"

using namespace keyline;
namespace auth = core::device_auth;

namespace {

// A manufacturer root, a Device CA, and one device with identity and transport certificates.
struct Pki {
  Botan::AutoSeeded_RNG rng;
  Botan::ECDSA_PrivateKey root_key{rng, Botan::EC_Group("secp256r1")};
  Botan::ECDSA_PrivateKey ca_key{rng, Botan::EC_Group("secp256r1")};
  Botan::X509_Certificate root = core::make_root_certificate(root_key, "test root", "Test", rng);
  Botan::X509_Certificate ca =
      core::make_ca_certificate(root, root_key, ca_key, "test device CA", "Test", 0, rng);

  struct Device {
    std::unique_ptr<Botan::ECDSA_PrivateKey> key;
    std::vector<core::Bytes> chain;
    core::ChipId chip;
  };
  Device device(const std::string& chip_hex, const std::string& imei) {
    Device d;
    d.chip = core::ChipId::parse(chip_hex);
    d.key = std::make_unique<Botan::ECDSA_PrivateKey>(rng, Botan::EC_Group("secp256r1"));
    const auto cert = core::issue_identity_certificate(ca, ca_key, *d.key, core::Imei::parse(imei), d.chip,
                                                       core::kDefaultHwType, rng);
    d.chain = {cert.BER_encode(), ca.BER_encode()};
    return d;
  }
};

Pki& pki() {
  static Pki p;
  return p;
}

std::function<std::string(const std::string&)> lookup(const std::map<std::string, std::string>& h) {
  return [h](const std::string& name) {
    const auto it = h.find(name);
    return it == h.end() ? std::string() : it->second;
  };
}

constexpr std::int64_t kNow = 1800000000;

}  // namespace

TEST_CASE("a signed request verifies and names the chip from the certificate") {
  auto d = pki().device("4B4C0001AABBCCDD0011", "490154203237518");
  const auto h = auth::sign_request(*d.key, d.chain, "POST", "/v1/transfers", "{\"a\":1}", kNow, pki().rng);
  CHECK(h.size() == 4);
  const auto v = auth::verify_request(lookup(h), "POST", "/v1/transfers", "{\"a\":1}", {pki().root}, kNow + 10);
  CHECK(v.chip_id == d.chip);
  CHECK(v.imei == "490154203237518");
  CHECK(v.nonce.size() == 32);
  CHECK(v.timestamp == kNow);
  // Two requests never share a nonce.
  const auto h2 = auth::sign_request(*d.key, d.chain, "POST", "/v1/transfers", "{\"a\":1}", kNow, pki().rng);
  CHECK(h2.at(auth::kNonceHeader) != h.at(auth::kNonceHeader));
}

TEST_CASE("any change to method, path, body, time or nonce breaks the signature") {
  auto d = pki().device("4B4C0001AABBCCDD0012", "357805023984942");
  const auto h = auth::sign_request(*d.key, d.chain, "POST", "/v1/transfers/x/key", "sealed", kNow, pki().rng);
  const std::vector<Botan::X509_Certificate> anchors{pki().root};
  CHECK_NOTHROW(auth::verify_request(lookup(h), "POST", "/v1/transfers/x/key", "sealed", anchors, kNow));
  CHECK_THROWS_AS(auth::verify_request(lookup(h), "GET", "/v1/transfers/x/key", "sealed", anchors, kNow),
                  core::CryptoError);
  CHECK_THROWS_AS(auth::verify_request(lookup(h), "POST", "/v1/transfers/y/key", "sealed", anchors, kNow),
                  core::CryptoError);
  CHECK_THROWS_AS(auth::verify_request(lookup(h), "POST", "/v1/transfers/x/key", "sealeD", anchors, kNow),
                  core::CryptoError);
  auto t = h;
  t[auth::kTimestampHeader] = std::to_string(kNow + 1);
  CHECK_THROWS_AS(auth::verify_request(lookup(t), "POST", "/v1/transfers/x/key", "sealed", anchors, kNow),
                  core::CryptoError);
  auto n = h;
  n[auth::kNonceHeader] = std::string(32, 'A');
  CHECK_THROWS_AS(auth::verify_request(lookup(n), "POST", "/v1/transfers/x/key", "sealed", anchors, kNow),
                  core::CryptoError);
}

TEST_CASE("a timestamp outside the clock skew is refused") {
  auto d = pki().device("4B4C0001AABBCCDD0013", "260531793113837");
  const auto h = auth::sign_request(*d.key, d.chain, "GET", "/v1/notifications", "", kNow, pki().rng);
  CHECK_NOTHROW(auth::verify_request(lookup(h), "GET", "/v1/notifications", "", {pki().root}, kNow + 300, 300));
  CHECK_THROWS_AS(auth::verify_request(lookup(h), "GET", "/v1/notifications", "", {pki().root}, kNow + 301, 300),
                  core::CryptoError);
  CHECK_THROWS_AS(auth::verify_request(lookup(h), "GET", "/v1/notifications", "", {pki().root}, kNow - 301, 300),
                  core::CryptoError);
}

TEST_CASE("a chain to another root, or another device's certificates, is refused") {
  auto d = pki().device("4B4C0001AABBCCDD0014", "490154203237518");
  auto other = pki().device("4B4C0001AABBCCDD0015", "357805023984942");
  const auto h = auth::sign_request(*d.key, d.chain, "GET", "/v1/notifications", "", kNow, pki().rng);

  Pki rogue;
  auto r = rogue.device("4B4C0001AABBCCDD0014", "490154203237518");
  const auto hr = auth::sign_request(*r.key, r.chain, "GET", "/v1/notifications", "", kNow, rogue.rng);
  try {
    auth::verify_request(lookup(hr), "GET", "/v1/notifications", "", {pki().root}, kNow);
    FAIL("a rogue chain verified");
  } catch (const core::Error& e) {
    CHECK(e.code() == core::ErrorCode::ChainInvalid);
  }
  // Claiming to be another chip: its certificates with our signature.
  auto swapped = h;
  std::string certs;
  for (const auto& c : other.chain) certs += (certs.empty() ? "" : ",") + core::to_base64(c);
  swapped[auth::kCertificatesHeader] = certs;
  CHECK_THROWS_AS(auth::verify_request(lookup(swapped), "GET", "/v1/notifications", "", {pki().root}, kNow),
                  core::CryptoError);
}

TEST_CASE("missing or malformed headers are format errors") {
  auto d = pki().device("4B4C0001AABBCCDD0016", "490154203237518");
  const auto h = auth::sign_request(*d.key, d.chain, "GET", "/v1/notifications", "", kNow, pki().rng);
  for (const char* name : {auth::kCertificatesHeader, auth::kTimestampHeader, auth::kNonceHeader, auth::kSignatureHeader}) {
    auto m = h;
    m.erase(name);
    CHECK_THROWS_AS(auth::verify_request(lookup(m), "GET", "/v1/notifications", "", {pki().root}, kNow),
                    core::FormatError);
  }
  auto bad_ts = h;
  bad_ts[auth::kTimestampHeader] = "-5";
  CHECK_THROWS_AS(auth::verify_request(lookup(bad_ts), "GET", "/v1/notifications", "", {pki().root}, kNow),
                  core::FormatError);
  auto bad_nonce = h;
  bad_nonce[auth::kNonceHeader] = "xyz";
  CHECK_THROWS_AS(auth::verify_request(lookup(bad_nonce), "GET", "/v1/notifications", "", {pki().root}, kNow),
                  core::FormatError);
  auto bad_b64 = h;
  bad_b64[auth::kCertificatesHeader] = "not base64!";
  CHECK_THROWS_AS(auth::verify_request(lookup(bad_b64), "GET", "/v1/notifications", "", {pki().root}, kNow),
                  core::FormatError);
  auto junk = h;
  junk[auth::kCertificatesHeader] = core::to_base64(core::Bytes{0x30, 0x03, 0x02, 0x01, 0x01});
  CHECK_THROWS_AS(auth::verify_request(lookup(junk), "GET", "/v1/notifications", "", {pki().root}, kNow),
                  core::FormatError);
  auto too_many = h;
  too_many[auth::kCertificatesHeader] = h.at(auth::kCertificatesHeader) + "," + h.at(auth::kCertificatesHeader) + "," +
                                        h.at(auth::kCertificatesHeader);
  CHECK_THROWS_AS(auth::verify_request(lookup(too_many), "GET", "/v1/notifications", "", {pki().root}, kNow),
                  core::FormatError);
}

// ---- the KPS's cache of verified chains (ChainCache): a hit skips the chain checks only ----

namespace {

std::string certs_header(const std::vector<core::Bytes>& chain) {
  std::string s;
  for (const auto& c : chain) s += (s.empty() ? "" : ",") + core::to_base64(c);
  return s;
}

// The profile's fixed notAfter (core/src/cert_profile.cpp), read from a certificate.
std::int64_t not_after_of(const core::Bytes& der) {
  return static_cast<std::int64_t>(Botan::X509_Certificate(der).not_after().time_since_epoch());
}

}  // namespace

TEST_CASE("a cached chain still needs a good request signature every time") {
  auth::ChainCache cache;
  auto d = pki().device("4B4C0001AABBCCDD0021", "490154203237518");
  auto other = pki().device("4B4C0001AABBCCDD0022", "357805023984942");
  const std::vector<Botan::X509_Certificate> anchors{pki().root};
  const auto h = auth::sign_request(*d.key, d.chain, "POST", "/v1/transfers", "{}", kNow, pki().rng);
  CHECK(auth::verify_request(lookup(h), "POST", "/v1/transfers", "{}", anchors, kNow, 300, &cache).chip_id == d.chip);
  CHECK(cache.size() == 1);
  CHECK(cache.hits() == 0);
  const auto v = auth::verify_request(lookup(h), "POST", "/v1/transfers", "{}", anchors, kNow, 300, &cache);
  CHECK(cache.hits() == 1);
  CHECK(v.chip_id == d.chip);
  CHECK(v.imei == "490154203237518");
  CHECK(v.chain.size() == 2);
  // The chain is a hit, the signature over another body is not.
  CHECK_THROWS_AS(auth::verify_request(lookup(h), "POST", "/v1/transfers", "{ }", anchors, kNow, 300, &cache),
                  core::CryptoError);
  CHECK(cache.hits() == 2);
  // Another device's chain, cached too, with d's signature: refused.
  const auto ho = auth::sign_request(*other.key, other.chain, "GET", "/v1/notifications", "", kNow, pki().rng);
  CHECK_NOTHROW(auth::verify_request(lookup(ho), "GET", "/v1/notifications", "", anchors, kNow, 300, &cache));
  auto swapped = h;
  swapped[auth::kCertificatesHeader] = certs_header(other.chain);
  CHECK_THROWS_AS(auth::verify_request(lookup(swapped), "POST", "/v1/transfers", "{}", anchors, kNow, 300, &cache),
                  core::CryptoError);
  // The timestamp is checked before the cache is asked.
  CHECK_THROWS_AS(auth::verify_request(lookup(h), "POST", "/v1/transfers", "{}", anchors, kNow + 301, 300, &cache),
                  core::CryptoError);
}

TEST_CASE("a cached chain does not pass under other anchors, nor a rogue or changed chain") {
  auth::ChainCache cache;
  auto d = pki().device("4B4C0001AABBCCDD0023", "490154203237518");
  const std::vector<Botan::X509_Certificate> anchors{pki().root};
  const auto h = auth::sign_request(*d.key, d.chain, "GET", "/v1/notifications", "", kNow, pki().rng);
  CHECK_NOTHROW(auth::verify_request(lookup(h), "GET", "/v1/notifications", "", anchors, kNow, 300, &cache));
  auto expect_chain_invalid = [&](const std::map<std::string, std::string>& headers,
                                  const std::vector<Botan::X509_Certificate>& a) {
    try {
      auth::verify_request(lookup(headers), "GET", "/v1/notifications", "", a, kNow, 300, &cache);
      FAIL("the chain verified");
    } catch (const core::Error& e) {
      CHECK(e.code() == core::ErrorCode::ChainInvalid);
    }
  };
  Pki rogue;
  // The same chain, a KPS trusting another root: the cached success is not this one's.
  expect_chain_invalid(h, {rogue.root});
  // A rogue manufacturer's chain for the same chip ID and IMEI.
  auto r = rogue.device("4B4C0001AABBCCDD0023", "490154203237518");
  expect_chain_invalid(auth::sign_request(*r.key, r.chain, "GET", "/v1/notifications", "", kNow, rogue.rng), anchors);
  // The cached chain without its Device CA.
  expect_chain_invalid(auth::sign_request(*d.key, {d.chain[0]}, "GET", "/v1/notifications", "", kNow, pki().rng),
                       anchors);
  // The cached chain with one bit of the identity certificate's signature flipped.
  auto changed = d.chain;
  changed[0].back() ^= 0x01;
  expect_chain_invalid(auth::sign_request(*d.key, changed, "GET", "/v1/notifications", "", kNow, pki().rng), anchors);
  // Failures are not remembered; the good chain is still the only entry and still a hit.
  CHECK(cache.size() == 1);
  CHECK(cache.hits() == 0);
  CHECK_NOTHROW(auth::verify_request(lookup(h), "GET", "/v1/notifications", "", anchors, kNow, 300, &cache));
  CHECK(cache.hits() == 1);
}

TEST_CASE("a cached chain is not used from its notAfter on") {
  auth::ChainCache cache;
  auto d = pki().device("4B4C0001AABBCCDD0024", "490154203237518");
  const std::vector<Botan::X509_Certificate> anchors{pki().root};
  const std::int64_t kNotAfter = not_after_of(d.chain[0]);
  CHECK(kNotAfter > kNow);
  const auto before = kNotAfter - 10;
  const auto h = auth::sign_request(*d.key, d.chain, "GET", "/v1/notifications", "", before, pki().rng);
  CHECK_NOTHROW(auth::verify_request(lookup(h), "GET", "/v1/notifications", "", anchors, before, 300, &cache));
  CHECK_NOTHROW(auth::verify_request(lookup(h), "GET", "/v1/notifications", "", anchors, kNotAfter - 1, 300, &cache));
  CHECK(cache.hits() == 1);
  // From notAfter on the entry is dropped and the chain takes the full path again (a miss).
  const auto misses = cache.misses();
  CHECK_NOTHROW(auth::verify_request(lookup(h), "GET", "/v1/notifications", "", anchors, kNotAfter, 300, &cache));
  CHECK(cache.hits() == 1);
  CHECK(cache.misses() == misses + 1);

  // The same on the cache itself, with an entry of a short life.
  auth::ChainCache c2;
  auto e = std::make_shared<auth::ChainCache::Entry>();
  e->not_after = 1000;
  c2.put("k", e);
  CHECK(c2.find("k", 999).get() == e.get());
  CHECK_FALSE(static_cast<bool>(c2.find("k", 1000)));
  CHECK(c2.size() == 0);
}

TEST_CASE("the chain cache is bounded: the least recently used entry goes first") {
  auth::ChainCache cache(2);
  auto entry = [] {
    auto e = std::make_shared<auth::ChainCache::Entry>();
    e->not_after = kNow + 1;
    return e;
  };
  cache.put("a", entry());
  cache.put("b", entry());
  CHECK(static_cast<bool>(cache.find("a", kNow)));  // a is now the most recent
  cache.put("c", entry());
  CHECK(cache.size() == 2);
  CHECK_FALSE(static_cast<bool>(cache.find("b", kNow)));
  CHECK(static_cast<bool>(cache.find("a", kNow)));
  CHECK(static_cast<bool>(cache.find("c", kNow)));
}

TEST_CASE("a KPS answer that is not authentic (2021) exits 5, refused") {
  CHECK(core::exit_code_for(static_cast<core::ErrorCode>(2021)) == 5);
  CHECK(core::exit_code_for(static_cast<core::ErrorCode>(2020)) == 1);
}
