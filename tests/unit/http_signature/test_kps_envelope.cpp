// KLKE, the source-signed sealed key (core/kps_envelope.h): a round trip, a strict parser, and the
// attacks of issue #17 — a key sealed by anyone but the source (a KPS or a proxy re-sealing to the
// target's public transport key), an envelope moved to another transfer, label or target.
#include <doctest/doctest.h>

#include <botan/auto_rng.h>
#include <botan/ecdsa.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/hpke.h"
#include "keyline/core/kps_envelope.h"
#include "vector_file.h"

using namespace keyline;
namespace klke = core::kps_envelope;

namespace {

struct Device {
  std::unique_ptr<Botan::ECDSA_PrivateKey> key;
  std::vector<core::Bytes> chain;
  core::ChipId chip;
  core::hpke::KeyPair transport;
};

struct Pki {
  Botan::AutoSeeded_RNG rng;
  Botan::ECDSA_PrivateKey root_key{rng, Botan::EC_Group("secp256r1")};
  Botan::ECDSA_PrivateKey ca_key{rng, Botan::EC_Group("secp256r1")};
  Botan::X509_Certificate root = core::make_root_certificate(root_key, "test root", "Test", rng);
  Botan::X509_Certificate ca = core::make_ca_certificate(root, root_key, ca_key, "test device CA", "Test", 0, rng);

  Device device(const std::string& chip_hex) {
    Device d;
    d.chip = core::ChipId::parse(chip_hex);
    d.key = std::make_unique<Botan::ECDSA_PrivateKey>(rng, Botan::EC_Group("secp256r1"));
    const auto cert = core::issue_identity_certificate(ca, ca_key, *d.key, core::Imei::parse("490154203237518"),
                                                       d.chip, core::kDefaultHwType, rng);
    d.chain = {cert.BER_encode(), ca.BER_encode()};
    d.transport = core::hpke::generate_key_pair();
    return d;
  }
};

Pki& pki() {
  static Pki p;
  return p;
}

core::SecureBytes user_key() { return core::SecureBytes(32, 0x5A); }

}  // namespace

TEST_CASE("KLKE: built by the source then parsed and opened by the target") {
  auto src = pki().device("4B4C0001AABBCCDD0011");
  auto dst = pki().device("4B4C0001AABBCCDD0022");
  const klke::Header h{"6f1d3a2e-0000-4000-8000-000000000001", "wifi-psk", src.chip, dst.chip};
  const auto wire = klke::build(h, dst.transport.public_key, user_key(), src.chain,
                                klke::botan_identity_signer(*src.key, pki().rng));
  CHECK(std::string(wire.begin(), wire.begin() + 4) == "KLKE");
  const auto e = klke::parse(wire);
  CHECK(e.header == h);
  CHECK(e.certificates.size() == 2);
  CHECK(e.sealed.size() == core::hpke::kEncSize + 32 + core::hpke::kTagSize);
  klke::verify_source(e, {pki().root});
  CHECK(klke::verify_and_open(e, h, {pki().root}, dst.transport.secret_key) == user_key());
}

TEST_CASE("KLKE: a key sealed to the target's public transport key by anyone else is refused") {
  auto src = pki().device("4B4C0001AABBCCDD0011");
  auto dst = pki().device("4B4C0001AABBCCDD0022");
  const klke::Header h{"t-1", "wifi-psk", src.chip, dst.chip};
  Botan::AutoSeeded_RNG rng;

  SUBCASE("a KPS or proxy re-seals its own key and signs with its own (uncertified) key") {
    Botan::ECDSA_PrivateKey attacker(rng, Botan::EC_Group("secp256r1"));
    const auto wire = klke::build(h, dst.transport.public_key, core::SecureBytes(32, 0x66), src.chain,
                                  klke::botan_identity_signer(attacker, rng));
    CHECK_THROWS_CODE(klke::verify_and_open(klke::parse(wire), h, {pki().root}, dst.transport.secret_key), Crypto);
  }
  SUBCASE("a proxy swaps the sealed part of a genuine envelope (the signature covers it)") {
    auto wire = klke::build(h, dst.transport.public_key, user_key(), src.chain,
                            klke::botan_identity_signer(*src.key, rng));
    auto e = klke::parse(wire);
    const auto forged_sealed = core::hpke::seal(dst.transport.public_key, core::Bytes{'k', 'e', 'y', 'l', 'i', 'n', 'e',
                                                '/', 'k', 'p', 's', '/', 'v', '2'}, klke::header_bytes(h),
                                                core::SecureBytes(32, 0x66));
    // Rebuild the bytes with the attacker's sealed key but the source's signature.
    core::Bytes forged = klke::header_bytes(h);
    core::put_u32(forged, static_cast<std::uint32_t>(forged_sealed.size()));
    forged.insert(forged.end(), forged_sealed.begin(), forged_sealed.end());
    core::put_u16(forged, 2);
    for (const auto& der : src.chain) {
      core::put_u32(forged, static_cast<std::uint32_t>(der.size()));
      forged.insert(forged.end(), der.begin(), der.end());
    }
    core::put_u16(forged, static_cast<std::uint16_t>(e.signature.size()));
    forged.insert(forged.end(), e.signature.begin(), e.signature.end());
    CHECK_THROWS_CODE(klke::verify_and_open(klke::parse(forged), h, {pki().root}, dst.transport.secret_key), Crypto);
  }
  SUBCASE("another genuine device signs a key for this transfer (its certificate names another chip)") {
    auto other = pki().device("4B4C0001AABBCCDD0033");
    const auto wire = klke::build(h, dst.transport.public_key, core::SecureBytes(32, 0x66), other.chain,
                                  klke::botan_identity_signer(*other.key, rng));
    CHECK_THROWS_CODE(klke::verify_and_open(klke::parse(wire), h, {pki().root}, dst.transport.secret_key), Crypto);
  }
  SUBCASE("a chain under another root") {
    Pki other_pki;
    auto fake = other_pki.device("4B4C0001AABBCCDD0011");  // the source's chip ID, another manufacturer
    const auto wire = klke::build(h, dst.transport.public_key, core::SecureBytes(32, 0x66), fake.chain,
                                  klke::botan_identity_signer(*fake.key, rng));
    CHECK_THROWS_CODE(klke::verify_and_open(klke::parse(wire), h, {pki().root}, dst.transport.secret_key), ChainInvalid);
  }
}

TEST_CASE("KLKE: an envelope moved to another transfer or label or target is refused") {
  auto src = pki().device("4B4C0001AABBCCDD0011");
  auto dst = pki().device("4B4C0001AABBCCDD0022");
  const klke::Header h{"t-1", "wifi-psk", src.chip, dst.chip};
  const auto e = klke::parse(klke::build(h, dst.transport.public_key, user_key(), src.chain,
                                         klke::botan_identity_signer(*src.key, pki().rng)));
  for (auto expected : {klke::Header{"t-2", "wifi-psk", src.chip, dst.chip},
                        klke::Header{"t-1", "other-key", src.chip, dst.chip},
                        klke::Header{"t-1", "wifi-psk", dst.chip, dst.chip},
                        klke::Header{"t-1", "wifi-psk", src.chip, src.chip}}) {
    CHECK_THROWS_CODE(klke::verify_and_open(e, expected, {pki().root}, dst.transport.secret_key), Crypto);
  }
  // The right header, the wrong transport key (a copy sealed to someone else).
  auto third = pki().device("4B4C0001AABBCCDD0033");
  CHECK_THROWS_CODE(klke::verify_and_open(e, h, {pki().root}, third.transport.secret_key), Crypto);
}

TEST_CASE("KLKE: the parser is strict") {
  auto src = pki().device("4B4C0001AABBCCDD0011");
  auto dst = pki().device("4B4C0001AABBCCDD0022");
  const klke::Header h{"t-1", "wifi-psk", src.chip, dst.chip};
  const auto wire = klke::build(h, dst.transport.public_key, user_key(), src.chain,
                                klke::botan_identity_signer(*src.key, pki().rng));
  // Every truncation fails to parse.
  for (std::size_t n = 0; n < wire.size(); n += 7) CHECK_THROWS_CODE(klke::parse(wire.data(), n), BadKeyEnvelope);
  CHECK_THROWS_CODE(klke::parse(wire.data(), wire.size() - 1), BadKeyEnvelope);
  auto extra = wire;
  extra.push_back(0);
  CHECK_THROWS_CODE(klke::parse(extra), BadKeyEnvelope);
  auto magic = wire;
  magic[0] = 'X';
  CHECK_THROWS_CODE(klke::parse(magic), BadKeyEnvelope);
  auto version = wire;
  version[4] = 2;
  CHECK_THROWS_CODE(klke::parse(version), BadKeyEnvelope);
  CHECK_THROWS_CODE(klke::parse(core::Bytes(klke::kMaxSize + 1, 0)), BadKeyEnvelope);
  // Any flipped byte in the signed part is caught by the signature (or the parser).
  for (std::size_t i = 5; i < wire.size(); i += 97) {
    auto t = wire;
    t[i] ^= 0x01;
    bool refused = false;
    try {
      klke::verify_and_open(klke::parse(t), h, {pki().root}, dst.transport.secret_key);
    } catch (const core::Error&) {
      refused = true;
    }
    CHECK_MESSAGE(refused, "flip at " << i);
  }
  CHECK_THROWS_CODE(klke::header_bytes(klke::Header{"", "l", src.chip, dst.chip}), BadKeyEnvelope);
  CHECK_THROWS_CODE(klke::header_bytes(klke::Header{"t", std::string(65, 'a'), src.chip, dst.chip}), BadKeyEnvelope);
}
