// core/chip_identity.h: the station's check of a chip's vendor identity and of its attestation
// statements, against counterfeit chips and tampered, replayed or misdirected statements.
#include <botan/pubkey.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>
#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "chip_test_vendor.h"
#include "keyline/core/error.h"

using namespace keyline;
using namespace keyline::core::chip;
using keyline::test::TestChip;
using keyline::test::TestVendor;

namespace {

template <typename F>
core::ErrorCode code_of(F&& f) {
  try {
    f();
  } catch (const core::Error& e) {
    return e.code();
  }
  FAIL("no error thrown");
  return core::ErrorCode::Usage;
}

template <typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const core::Error& e) {
    return e.what();
  }
  return "";
}

core::Bytes random_bytes(Botan::RandomNumberGenerator& rng, std::size_t n) {
  core::Bytes b(n);
  rng.randomize(b.data(), n);
  return b;
}

struct Setup {
  TestVendor vendor;
  TestChip chip = vendor.chip(test::chip_a());
  std::vector<Botan::X509_Certificate> vendors{vendor.ca()};
  VerifiedChip verified() { return verify_chip({chip.sd_cert}, chip.attestation_cert, vendors, chip.id); }

  Statement statement(KeyKind kind, const core::Bytes& challenge, const core::Bytes& context,
                      std::uint32_t counter) {
    Statement s;
    s.chip = chip.id;
    s.kind = kind;
    s.usage = kind == KeyKind::Identity ? 0x01 : 0x02;
    if (kind == KeyKind::Identity) {
      Botan::ECDSA_PrivateKey k(vendor.rng(), Botan::EC_Group("secp256r1"));
      s.public_key = k.public_point().encode(Botan::PointGFp::UNCOMPRESSED);
    } else {
      s.public_key = random_bytes(vendor.rng(), 32);
    }
    s.challenge = challenge;
    s.context = context;
    s.counter = counter;
    return s;
  }
};

// A chip certificate valid only in the past: what a vendor issued to a chip long retired.
core::Bytes expired_sd_cert(TestVendor& v, const TestChip& c) {
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
  ext.add(new Botan::Cert_Extension::Key_Usage(Botan::KEY_AGREEMENT), true);
  ext.add(new Botan::Cert_Extension::Authority_Key_ID(v.ca().subject_key_id()), false);
  ext.add(new core::HardwareModuleNameExtension(Botan::OID(core::kDefaultHwType), c.id), false);
  Botan::X509_DN dn;
  dn.add_attribute("X520.CommonName", "expired chip");
  Botan::AlgorithmIdentifier algo;
  std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(v.key(), v.rng(), "SHA-256", algo));
  const auto now = std::chrono::system_clock::now();
  return Botan::X509_CA::make_cert(
             signer.get(), v.rng(), Botan::BigInt(77), algo, c.sd_key->subject_public_key(),
             Botan::X509_Time(now - std::chrono::hours(48)), Botan::X509_Time(now - std::chrono::hours(24)),
             v.ca().subject_dn(), dn, ext)
      .BER_encode();
}

}  // namespace

TEST_CASE("verify_chip: a genuine chip yields its SD and attestation points and its vendor") {
  Setup s;
  const auto v = s.verified();
  CHECK(v.sd_public_point == s.chip.sd_key->public_point().encode(Botan::PointGFp::UNCOMPRESSED));
  CHECK(v.attestation_public_point ==
        s.chip.attestation_key->public_point().encode(Botan::PointGFp::UNCOMPRESSED));
  CHECK(v.vendor == "Test Chip Vendor");
  CHECK(v.vendor_ca_sha256.size() == 64);
  // The vendor CA itself in the store (issuer side first) changes nothing.
  const auto v2 = verify_chip({s.vendor.ca().BER_encode(), s.chip.sd_cert}, s.chip.attestation_cert,
                              s.vendors, s.chip.id);
  CHECK(v2.sd_public_point == v.sd_public_point);
}

TEST_CASE("verify_chip: a chip of an unlisted vendor is not genuine") {
  Setup s;
  TestVendor other("Counterfeit Vendor");
  const auto fake = other.chip(s.chip.id);
  CHECK(code_of([&] { verify_chip({fake.sd_cert}, fake.attestation_cert, s.vendors, s.chip.id); }) ==
        core::ErrorCode::ChipNotGenuine);
  // A genuine SD certificate with a counterfeit attestation certificate is still a counterfeit.
  CHECK(code_of([&] { verify_chip({s.chip.sd_cert}, fake.attestation_cert, s.vendors, s.chip.id); }) ==
        core::ErrorCode::ChipNotGenuine);
  // Listing both vendors does not let one chip mix them.
  std::vector<Botan::X509_Certificate> both{s.vendor.ca(), other.ca()};
  CHECK(code_of([&] { verify_chip({s.chip.sd_cert}, fake.attestation_cert, both, s.chip.id); }) ==
        core::ErrorCode::ChipNotGenuine);
}

TEST_CASE("verify_chip: a vendor's name with another key, or a changed signature, is not genuine") {
  // The check of a chip certificate straight under a listed vendor (its CA's own checks done once,
  // docs/channel.md "Cost"): a counterfeit vendor CA with the listed vendor's exact name signs a chip.
  Setup s;
  s.verified();  // the listed vendor's checks are now remembered
  TestVendor twin("Test Chip Vendor");
  REQUIRE(twin.ca().subject_dn() == s.vendor.ca().subject_dn());
  const auto fake = twin.chip(s.chip.id);
  CHECK(code_of([&] { verify_chip({fake.sd_cert}, s.chip.attestation_cert, s.vendors, s.chip.id); }) ==
        core::ErrorCode::ChipNotGenuine);
  CHECK(code_of([&] { verify_chip({s.chip.sd_cert}, fake.attestation_cert, s.vendors, s.chip.id); }) ==
        core::ErrorCode::ChipNotGenuine);
  // The last byte of the DER is inside the signature value: the certificate still parses.
  for (core::Bytes* cert : {&s.chip.sd_cert, &s.chip.attestation_cert}) {
    core::Bytes original = *cert;
    cert->back() ^= 0x01;
    CHECK(code_of([&] { s.verified(); }) == core::ErrorCode::ChipNotGenuine);
    *cert = original;
  }
  CHECK(s.verified().vendor == "Test Chip Vendor");
}

TEST_CASE("verify_chip: certificates naming another chip than the CPLC are a mismatch") {
  Setup s;
  CHECK(code_of([&] { verify_chip({s.chip.sd_cert}, s.chip.attestation_cert, s.vendors, test::chip_b()); }) ==
        core::ErrorCode::ChipIdMismatch);
  // Another genuine chip's attestation certificate next to this chip's SD certificate.
  const auto b = s.vendor.chip(test::chip_b());
  CHECK(code_of([&] { verify_chip({s.chip.sd_cert}, b.attestation_cert, s.vendors, s.chip.id); }) ==
        core::ErrorCode::ChipIdMismatch);
}

TEST_CASE("verify_chip: SD and attestation certificates swapped fail on their key usage") {
  Setup s;
  CHECK(code_of([&] { verify_chip({s.chip.attestation_cert}, s.chip.sd_cert, s.vendors, s.chip.id); }) ==
        core::ErrorCode::ChipNotGenuine);
  CHECK(code_of([&] { verify_chip({s.chip.sd_cert}, s.chip.sd_cert, s.vendors, s.chip.id); }) ==
        core::ErrorCode::ChipNotGenuine);
  CHECK(code_of([&] {
          verify_chip({s.chip.attestation_cert}, s.chip.attestation_cert, s.vendors, s.chip.id);
        }) == core::ErrorCode::ChipNotGenuine);
  // The vendor CA's own certificate as the SD certificate.
  CHECK(code_of([&] {
          verify_chip({s.vendor.ca().BER_encode()}, s.chip.attestation_cert, s.vendors, s.chip.id);
        }) == core::ErrorCode::ChipNotGenuine);
}

TEST_CASE("verify_chip: an expired certificate, an empty store or bytes that are no certificate") {
  Setup s;
  const auto expired = expired_sd_cert(s.vendor, s.chip);
  CHECK(code_of([&] { verify_chip({expired}, s.chip.attestation_cert, s.vendors, s.chip.id); }) ==
        core::ErrorCode::ChipNotGenuine);
  // Refused for its validity, not for some other flaw of the hand-made certificate.
  CHECK(message_of([&] {
          verify_chip({expired}, s.chip.attestation_cert, s.vendors, s.chip.id);
        }).find("expired") != std::string::npos);
  CHECK(code_of([&] { verify_chip({}, s.chip.attestation_cert, s.vendors, s.chip.id); }) ==
        core::ErrorCode::ChipNotGenuine);
  core::Bytes broken = s.chip.sd_cert;
  broken[broken.size() / 2] ^= 0x01;
  CHECK(code_of([&] { verify_chip({broken}, s.chip.attestation_cert, s.vendors, s.chip.id); }) ==
        core::ErrorCode::ChipNotGenuine);
}

TEST_CASE("load_vendor_list: CA certificates only") {
  Setup s;
  const auto dir =
      std::filesystem::temp_directory_path() / ("keyline-chip-vendors-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "ok.pem") << core::to_pem(s.vendor.ca());
  CHECK(load_vendor_list((dir / "ok.pem").string()).size() == 1);
  std::ofstream(dir / "leaf.pem") << core::to_pem(Botan::X509_Certificate(s.chip.sd_cert));
  CHECK(code_of([&] { load_vendor_list((dir / "leaf.pem").string()); }) == core::ErrorCode::Config);
  std::ofstream(dir / "empty.pem") << "";
  CHECK(code_of([&] { load_vendor_list((dir / "empty.pem").string()); }) == core::ErrorCode::Config);
  CHECK(code_of([&] { load_vendor_list((dir / "missing.pem").string()); }) == core::ErrorCode::Config);
  std::filesystem::remove_all(dir);
}

TEST_CASE("attestation: a statement verifies and round-trips") {
  Setup s;
  const auto challenge = random_bytes(s.vendor.rng(), 32);
  const auto context = context_hash(s.chip.id, "490154203237518", "station-1", 42);
  const auto st = s.statement(KeyKind::Identity, challenge, context, 7);
  const auto signed_st = sign_statement(st, *s.chip.attestation_key, s.vendor.rng());
  const auto wire = encode_signed_statement(signed_st);
  const auto back = parse_signed_statement(wire.data(), wire.size());
  const auto got = verify_statement(back, s.verified(), s.chip.id, KeyKind::Identity, challenge, context, 6);
  CHECK(got.public_key == st.public_key);
  CHECK(got.counter == 7);
  const auto tr = s.statement(KeyKind::Transport, challenge, context, 8);
  const auto tr_signed = sign_statement(tr, *s.chip.attestation_key, s.vendor.rng());
  CHECK(verify_statement(tr_signed, s.verified(), s.chip.id, KeyKind::Transport, challenge, context, 7)
            .public_key == tr.public_key);
}

TEST_CASE("attestation: every byte of the statement and the signature is covered") {
  Setup s;
  const auto challenge = random_bytes(s.vendor.rng(), 32);
  const auto context = random_bytes(s.vendor.rng(), 32);
  const auto good = sign_statement(s.statement(KeyKind::Identity, challenge, context, 3),
                                   *s.chip.attestation_key, s.vendor.rng());
  const auto chip = s.verified();
  for (std::size_t i = 0; i < good.statement.size(); ++i) {
    auto t = good;
    t.statement[i] ^= 0x01;
    CAPTURE(i);
    CHECK(code_of([&] { verify_statement(t, chip, s.chip.id, KeyKind::Identity, challenge, context, 0); }) ==
          core::ErrorCode::BadAttestation);
  }
  for (std::size_t i = 0; i < good.signature.size(); ++i) {
    auto t = good;
    t.signature[i] ^= 0x80;
    CAPTURE(i);
    CHECK(code_of([&] { verify_statement(t, chip, s.chip.id, KeyKind::Identity, challenge, context, 0); }) ==
          core::ErrorCode::BadAttestation);
  }
}

TEST_CASE("attestation: a replayed counter, another challenge, context or key kind is a mismatch") {
  Setup s;
  const auto challenge = random_bytes(s.vendor.rng(), 32);
  const auto context = random_bytes(s.vendor.rng(), 32);
  const auto st = sign_statement(s.statement(KeyKind::Identity, challenge, context, 10),
                                 *s.chip.attestation_key, s.vendor.rng());
  const auto chip = s.verified();
  auto verify = [&](KeyKind kind, const core::Bytes& ch, const core::Bytes& ctx, std::uint32_t last) {
    return code_of([&] { verify_statement(st, chip, s.chip.id, kind, ch, ctx, last); });
  };
  CHECK(verify(KeyKind::Identity, challenge, context, 10) == core::ErrorCode::AttestationMismatch);  // replay
  CHECK(verify(KeyKind::Identity, challenge, context, 11) == core::ErrorCode::AttestationMismatch);
  CHECK(verify(KeyKind::Identity, random_bytes(s.vendor.rng(), 32), context, 9) ==
        core::ErrorCode::AttestationMismatch);
  CHECK(verify(KeyKind::Identity, challenge, random_bytes(s.vendor.rng(), 32), 9) ==
        core::ErrorCode::AttestationMismatch);
  CHECK(verify(KeyKind::Transport, challenge, context, 9) ==
        core::ErrorCode::AttestationMismatch);  // wrong kind
  CHECK_NOTHROW(verify_statement(st, chip, s.chip.id, KeyKind::Identity, challenge, context, 9));
}

TEST_CASE("attestation: another chip's statement is refused") {
  Setup s;
  const auto b = s.vendor.chip(test::chip_b());
  const auto challenge = random_bytes(s.vendor.rng(), 32);
  const auto context = random_bytes(s.vendor.rng(), 32);
  auto st_b = s.statement(KeyKind::Identity, challenge, context, 1);
  st_b.chip = b.id;
  // Chip B's statement, signed by chip B, presented as chip A's: A's attestation key did not sign it.
  const auto signed_b = sign_statement(st_b, *b.attestation_key, s.vendor.rng());
  CHECK(code_of([&] {
          verify_statement(signed_b, s.verified(), s.chip.id, KeyKind::Identity, challenge, context, 0);
        }) == core::ErrorCode::BadAttestation);
  // Signed by A's key but naming B (what a chip answering for another chip would send).
  const auto signed_a_for_b = sign_statement(st_b, *s.chip.attestation_key, s.vendor.rng());
  CHECK(code_of([&] {
          verify_statement(signed_a_for_b, s.verified(), s.chip.id, KeyKind::Identity, challenge, context, 0);
        }) == core::ErrorCode::AttestationMismatch);
}

TEST_CASE("attestation: the statement layout is exact") {
  Setup s;
  const auto st =
      s.statement(KeyKind::Transport, random_bytes(s.vendor.rng(), 32), random_bytes(s.vendor.rng(), 32), 5);
  const auto bytes = encode_statement(st);
  CHECK(bytes.size() == 4 + 1 + 10 + 3 + 32 + 32 + 32 + 4);
  const auto back = parse_statement(bytes.data(), bytes.size());
  CHECK(back.public_key == st.public_key);
  CHECK(back.counter == 5);
  auto extra = bytes;
  extra.push_back(0);
  CHECK_THROWS_AS(parse_statement(extra.data(), extra.size()), core::FormatError);
  CHECK_THROWS_AS(parse_statement(bytes.data(), bytes.size() - 1), core::FormatError);
  auto kind = bytes;
  kind[15] = 0x01;  // claims an identity key with a 32-byte key
  CHECK_THROWS_AS(parse_statement(kind.data(), kind.size()), core::FormatError);
  auto usage = bytes;
  usage[16] = 0x01;
  CHECK_THROWS_AS(parse_statement(usage.data(), usage.size()), core::FormatError);
  const std::uint8_t short_answer[] = {0x00, 0x05, 1, 2};
  CHECK_THROWS_AS(parse_signed_statement(short_answer, sizeof short_answer), core::FormatError);
  const std::uint8_t no_sig[] = {0x00, 0x02, 1, 2};
  CHECK_THROWS_AS(parse_signed_statement(no_sig, sizeof no_sig), core::FormatError);
}

TEST_CASE("GENERATE KEY command and context hash") {
  const core::Bytes challenge(32, 0xAA), context(32, 0x55);
  const auto c = generate_key_command(KeyKind::Transport, challenge, context);
  CHECK(c.cla == 0x80);
  CHECK(c.ins == 0x47);
  CHECK(c.p1 == 0x02);
  CHECK(c.p2 == 0x00);
  CHECK(c.data.size() == 64);
  CHECK(c.le.has_value());
  CHECK_THROWS(generate_key_command(KeyKind::Identity, core::Bytes(31, 0), context));
  const auto h = context_hash(test::chip_a(), "490154203237518", "station-1", 1);
  CHECK(h.size() == 32);
  CHECK(h != context_hash(test::chip_b(), "490154203237518", "station-1", 1));
  CHECK(h != context_hash(test::chip_a(), "490154203237526", "station-1", 1));
  CHECK(h != context_hash(test::chip_a(), "490154203237518", "station-2", 1));
  CHECK(h != context_hash(test::chip_a(), "490154203237518", "station-1", 2));
}
