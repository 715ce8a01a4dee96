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
