// The transport certificate in the public record (docs/decisions.md, "The transport certificate in the
// public record"): records of both shapes validate, and a third certificate that is not this device's
// transport certificate under the identity's Device CA is refused by validate_record.
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pubkey.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>

#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/record.h"

using namespace keyline::core;

namespace {

const ChipId kChip = ChipId::parse("4790507200000001A0B1");
const ChipId kOtherChip = ChipId::parse("4790507200000002A0B1");
const Imei kImei = Imei::parse("490154203237518");
const Imei kOtherImei = Imei::parse("357805023984942");

struct Pki {
  Botan::AutoSeeded_RNG rng;
  Botan::EC_Group group{"secp256r1"};
  Botan::ECDSA_PrivateKey root_key{rng, group};
  Botan::ECDSA_PrivateKey ca_key{rng, group};
  Botan::ECDSA_PrivateKey other_ca_key{rng, group};
  Botan::ECDSA_PrivateKey device_key{rng, group};
  Botan::Curve25519_PrivateKey transport_key{rng};
  Botan::X509_Certificate root = make_root_certificate(root_key, "Test Root", "keyline test", rng);
  Botan::X509_Certificate ca = make_ca_certificate(root, root_key, ca_key, "Test Device CA", "keyline test", 0, rng);
  // Another Device CA under the same root, and one of the same name under another key.
  Botan::X509_Certificate other_ca =
      make_ca_certificate(root, root_key, other_ca_key, "Other Device CA", "keyline test", 0, rng);
  Botan::X509_Certificate twin_ca =
      make_ca_certificate(root, root_key, other_ca_key, "Test Device CA", "keyline test", 0, rng);

  Bytes transport(const Imei& imei = kImei, const ChipId& chip = kChip) {
    return issue_transport_certificate_der(ca, ca_key, transport_key, imei, chip, kDefaultHwType, rng);
  }

  Record record(bool with_transport) {
    Record r;
    r.chip_id = kChip;
    r.imei = kImei;
    r.backup = seal_backup(SecureBytes(32, 0x5A), kChip, SecureBytes{1, 2, 3});
    r.certificates = {issue_identity_certificate_der(ca, ca_key, device_key, kImei, kChip, kDefaultHwType, rng),
                      ca.BER_encode()};
    if (with_transport) r.certificates.push_back(transport());
    return r;
  }

  // What issue_transport_certificate's lint would never sign: the same subject and SAN under any key,
  // key usage, validity and issuer.
  Bytes forged(const std::vector<std::uint8_t>& spki, Botan::Key_Constraints usage,
               const Botan::X509_Time& not_before, const Botan::X509_Time& not_after,
               const Botan::X509_Certificate& issuer, const Botan::Private_Key& issuer_key) {
    const Botan::X509_Certificate model(transport());
    Botan::Extensions ext;
    ext.add(new HardwareModuleNameExtension(Botan::OID(kDefaultHwType), kChip), false);
    ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
    ext.add(new Botan::Cert_Extension::Key_Usage(usage), true);
    Botan::AlgorithmIdentifier sig_algo;
    std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(issuer_key, rng, "SHA-256", sig_algo));
    return Botan::X509_CA::make_cert(signer.get(), rng, sig_algo, spki, not_before, not_after, issuer.subject_dn(),
                                     model.subject_dn(), ext)
        .BER_encode();
  }
  Bytes forged(Botan::Key_Constraints usage) {
    const auto now = std::chrono::system_clock::now();
    return forged(transport_key.subject_public_key(), usage, Botan::X509_Time(now),
                  Botan::X509_Time(now + std::chrono::hours(24 * 365)), ca, ca_key);
  }
};

Pki& pki() {
  static Pki p;
  return p;
}

std::string transport_error(const Record& r) {
  try {
    validate_record(r, {pki().root});
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::BadTransportCertificate);
    return e.what();
  }
  FAIL("record validated");
  return {};
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("record transport: an old-shape (2 certificates) and a new-shape (3) record both validate") {
  Pki& p = pki();
  const Record old_shape = p.record(false);
  const Record new_shape = p.record(true);
  CHECK_NOTHROW(validate_record(old_shape, {p.root}));
  CHECK_NOTHROW(validate_record(new_shape, {p.root}));
  CHECK_NOTHROW(validate_record(Record::from_json(new_shape.to_json()), {p.root}));
  CHECK_FALSE(transport_certificate(old_shape).has_value());
  const auto t = transport_certificate(new_shape);
  REQUIRE(t.has_value());
  CHECK(t->BER_encode() == new_shape.certificates[2]);
  CHECK(t->subject_public_key_bitstring() == p.transport_key.public_value());
  CHECK_NOTHROW(check_transport_certificate(new_shape, p.ca));
  // The hash covers the third certificate like the others: the two shapes are two records.
  CHECK(old_shape.hash() != new_shape.hash());
}

TEST_CASE("record transport: check_transport_certificate needs one, from the identity's Device CA") {
  Pki& p = pki();
  try {
    check_transport_certificate(p.record(false), p.ca);
    FAIL("a record without a transport certificate passed");
  } catch (const FormatError& e) {
    CHECK(e.code() == ErrorCode::BadTransportCertificate);
    CHECK(has(e.what(), "is missing"));
  }
  CHECK_THROWS_AS(check_transport_certificate(p.record(true), p.other_ca), FormatError);
  CHECK_THROWS_AS(check_transport_certificate(p.record(true), p.twin_ca), FormatError);
}

TEST_CASE("record transport: a third certificate that is not this device's is refused") {
  Pki& p = pki();
  Record r = p.record(true);
  SUBCASE("another chip") {
    r.certificates[2] = p.transport(kImei, kOtherChip);
    CHECK(has(transport_error(r), "chip ID " + kOtherChip.str() + " differs from record chip ID " + kChip.str()));
  }
  SUBCASE("another IMEI") {
    r.certificates[2] = p.transport(kOtherImei, kChip);
    CHECK(has(transport_error(r), "IMEI " + kOtherImei.str() + " differs"));
  }
  SUBCASE("another key type: the identity certificate's P-256 key") {
    r.certificates[2] = issue_identity_certificate_der(p.ca, p.ca_key, p.device_key, kImei, kChip, kDefaultHwType, p.rng);
    CHECK(has(transport_error(r), "key is not X25519"));
  }
  SUBCASE("an X25519 key for signing, not keyAgreement") {
    r.certificates[2] = p.forged(Botan::Key_Constraints(Botan::DIGITAL_SIGNATURE));
    CHECK(has(transport_error(r), "keyUsage is not exactly keyAgreement"));
    r.certificates[2] = p.forged(Botan::Key_Constraints(Botan::KEY_AGREEMENT | Botan::DIGITAL_SIGNATURE));
    CHECK(has(transport_error(r), "keyUsage is not exactly keyAgreement"));
  }
  SUBCASE("the forging helper itself makes a certificate that passes with keyAgreement") {
    r.certificates[2] = p.forged(Botan::Key_Constraints(Botan::KEY_AGREEMENT));
    CHECK_NOTHROW(validate_record(r, {p.root}));
  }
  SUBCASE("signed by another Device CA of the same root") {
    r.certificates[2] = issue_transport_certificate_der(p.other_ca, p.other_ca_key, p.transport_key, kImei, kChip,
                                                        kDefaultHwType, p.rng);
    // validate_record takes the second certificate as the Device CA; check_transport_certificate is
    // told one, so the transport certificate's own issuer check is what refuses it here.
    try {
      check_transport_certificate(r, p.ca);
      FAIL("a transport certificate of another Device CA passed");
    } catch (const FormatError& e) {
      CHECK(has(e.what(), "issuer differs from the identity certificate's"));
    }
  }
  SUBCASE("signed by another key under the Device CA's name") {
    r.certificates[2] = issue_transport_certificate_der(p.twin_ca, p.other_ca_key, p.transport_key, kImei, kChip,
                                                        kDefaultHwType, p.rng);
    CHECK(has(transport_error(r), "is not signed by the Device CA"));
  }
  SUBCASE("expired, or not yet valid beyond the clock skew") {
    const auto now = std::chrono::system_clock::now();
    const auto spki = p.transport_key.subject_public_key();
    const Botan::Key_Constraints ka(Botan::KEY_AGREEMENT);
    r.certificates[2] = p.forged(spki, ka, Botan::X509_Time(now - std::chrono::hours(48)),
                                 Botan::X509_Time(now - std::chrono::hours(1)), p.ca, p.ca_key);
    CHECK(has(transport_error(r), "is not valid now"));
    r.certificates[2] = p.forged(spki, ka, Botan::X509_Time(now + std::chrono::hours(48)),
                                 Botan::X509_Time(now + std::chrono::hours(96)), p.ca, p.ca_key);
    CHECK(has(transport_error(r), "is not valid now"));
    r.certificates[2] = p.forged(spki, ka, Botan::X509_Time(now + std::chrono::hours(1)),
                                 Botan::X509_Time(now + std::chrono::hours(96)), p.ca, p.ca_key);
    CHECK_NOTHROW(validate_record(r, {p.root}));
  }
  SUBCASE("two end-entity certificates after the identity") {
    r.certificates.push_back(p.transport());
    try {
      (void)transport_certificate(r);
      FAIL("two transport certificates passed");
    } catch (const FormatError& e) {
      CHECK(e.code() == ErrorCode::BadTransportCertificate);
      CHECK(has(e.what(), "is not the only end-entity certificate"));
    }
  }
  SUBCASE("bytes that are not a certificate") {
    r.certificates[2] = Bytes{0x30, 0x03, 1, 2, 3};
    CHECK_THROWS_AS(validate_record(r, {p.root}), FormatError);
  }
}

namespace {

// validate_record's verdict on a record: the error's code and text, or "" when it passed.
std::pair<ErrorCode, std::string> verdict(const Record& r, const std::vector<Botan::X509_Certificate>& anchors) {
  try {
    validate_record(r, anchors);
  } catch (const Error& e) {
    return {e.code(), e.what()};
  }
  return {static_cast<ErrorCode>(0), ""};
}

}  // namespace

// The attacker review: shapes no station publishes were accepted (the issuer found anywhere, the
// transport certificate standing in as the identity). Only [I], [I, C] and [I, C, T] validate.
TEST_CASE("record shape: a transport certificate as the identity, reordered or extra certificates are refused") {
  Pki& p = pki();
  const Record good = p.record(true);
  const Bytes I = good.certificates[0], C = good.certificates[1], T = good.certificates[2];
  const Bytes root = p.root.BER_encode(), other = p.other_ca.BER_encode();
  const std::vector<std::pair<std::string, std::vector<Bytes>>> shapes{
      {"[T, C, T]", {T, C, T}}, {"[T, C]", {T, C}},           {"[I, T, C]", {I, T, C}},
      {"[I, C, C]", {I, C, C}}, {"[I, C, T, T]", {I, C, T, T}}, {"[I, other, C, other, other, T]", {I, other, C, other, other, T}},
      {"[I, other, C]", {I, other, C}}, {"[I, C, root]", {I, C, root}}, {"[I, root, C]", {I, root, C}}};
  for (const auto& shape : shapes) {
    // Not a structured binding: CAPTURE's lambda cannot capture one in C++17 (clang refuses it).
    const std::string& what = shape.first;
    const std::vector<Bytes>& certs = shape.second;
    CAPTURE(what);
    Record r = good;
    r.certificates = certs;
    const auto [code, text] = verdict(r, {p.root});
    CHECK(code == ErrorCode::BadRecord);
    MESSAGE(what << ": " << text);
  }
  // What the station publishes still validates.
  CHECK(verdict(good, {p.root}).second.empty());
  Record two = good;
  two.certificates = {I, C};
  CHECK(verdict(two, {p.root}).second.empty());
  Record one = good;
  one.certificates = {I};
  CHECK(verdict(one, {p.ca}).second.empty());
}

TEST_CASE("record shape: a second certificate of the Device CA's name under another key is refused") {
  Pki& p = pki();
  Record r = p.record(true);
  // The anchors hold the Device CA itself: the chain passes through it, the second certificate (a
  // twin of its name) did not sign the identity certificate and signed the transport certificate.
  r.certificates[1] = p.twin_ca.BER_encode();
  r.certificates[2] = issue_transport_certificate_der(p.twin_ca, p.other_ca_key, p.transport_key, kImei, kChip,
                                                      kDefaultHwType, p.rng);
  const auto [code, text] = verdict(r, {p.root, p.ca});
  CHECK(code == ErrorCode::BadRecord);
  CHECK(has(text, "the second certificate is not the CA that issued the identity certificate"));
}
