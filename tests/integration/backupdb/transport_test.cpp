// The transport certificate in the public record (docs/decisions.md): the real server program takes
// records of both shapes, [identity, Device CA] and [identity, Device CA, transport], on its full
// validation and on its remembered-Device-CA path, serves the third certificate back, and answers 422
// (code 1214) to a third certificate that is another chip's, of another key type, not keyAgreement, or
// from another CA, storing nothing.

#include <botan/curve25519.h>
#include <botan/pubkey.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>

// The fixture's log helpers are not used here.
#pragma GCC diagnostic ignored "-Wunused-function"
#include "tlog_fixture.h"

namespace {

// Record n of the fixture with a transport certificate of `chip` under `ca` appended.
Record with_transport(std::uint32_t n, const ChipId& chip, const Botan::X509_Certificate& ca,
                      const Botan::Private_Key& ca_key) {
  Record r = pki().record(n);
  Botan::Curve25519_PrivateKey x(pki().rng);
  r.certificates.push_back(issue_transport_certificate_der(ca, ca_key, x, r.imei, chip, kDefaultHwType, pki().rng));
  return r;
}
Record with_transport(std::uint32_t n) {
  const Record base = pki().record(n);
  return with_transport(n, base.chip_id, *pki().device_ca, *pki().device_ca_key);
}

// An X25519 certificate of record n's device from the Device CA with digitalSignature: what the
// issuer's lint never signs.
Bytes signing_x25519(const Record& r) {
  Botan::Curve25519_PrivateKey x(pki().rng);
  const Botan::X509_Certificate model(
      issue_transport_certificate_der(*pki().device_ca, *pki().device_ca_key, x, r.imei, r.chip_id, kDefaultHwType, pki().rng));
  Botan::Extensions ext;
  ext.add(new HardwareModuleNameExtension(Botan::OID(kDefaultHwType), r.chip_id), false);
  ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
  ext.add(new Botan::Cert_Extension::Key_Usage(Botan::Key_Constraints(Botan::DIGITAL_SIGNATURE)), true);
  Botan::AlgorithmIdentifier algo;
  std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(*pki().device_ca_key, pki().rng, "SHA-256", algo));
  const auto now = std::chrono::system_clock::now();
  return Botan::X509_CA::make_cert(signer.get(), pki().rng, algo, x.subject_public_key(), Botan::X509_Time(now),
                                   Botan::X509_Time(now + std::chrono::hours(24 * 365)), pki().device_ca->subject_dn(),
                                   model.subject_dn(), ext)
      .BER_encode();
}

// The forged third certificates, each on its own record n, n+1, ...
std::vector<std::pair<std::string, Record>> forged_records(std::uint32_t n) {
  std::vector<std::pair<std::string, Record>> out;
  const ChipId other_chip = ChipId::parse("47905180000000999999");
  out.emplace_back("another chip", with_transport(n, other_chip, *pki().device_ca, *pki().device_ca_key));
  Record p256 = pki().record(n + 1);
  auto k = new_key(pki().rng);
  p256.certificates.push_back(issue_identity_certificate_der(*pki().device_ca, *pki().device_ca_key, *k, p256.imei,
                                                             p256.chip_id, kDefaultHwType, pki().rng));
  out.emplace_back("a P-256 key", p256);
  Record signing = pki().record(n + 2);
  signing.certificates.push_back(signing_x25519(signing));
  out.emplace_back("digitalSignature", signing);
  // Another Device CA of the same root signed the transport certificate (attaching that CA as a
  // fourth certificate is no shape the public DB takes: 1170, see the last test case).
  auto other_key = new_key(pki().rng);
  const auto other_ca =
      make_ca_certificate(*pki().root, *pki().root_key, *other_key, "Other Device CA", "keyline test", 0, pki().rng);
  const Record base = pki().record(n + 3);
  Record other = with_transport(n + 3, base.chip_id, other_ca, *other_key);
  out.emplace_back("another Device CA", other);
  // The Device CA's name under another key.
  const auto twin = make_ca_certificate(*pki().root, *pki().root_key, *other_key, "Test Device CA", "keyline test", 0,
                                        pki().rng);
  const Record base4 = pki().record(n + 4);
  out.emplace_back("the Device CA's name, another key", with_transport(n + 4, base4.chip_id, twin, *other_key));
  return out;
}

// Each forged record: 422 code 1214 with the fixed detail, and neither its chip ID nor its IMEI stored.
void refused_each(const Server& s, std::uint32_t n) {
  for (const auto& [what, r] : forged_records(n)) {
    CAPTURE(what);
    const auto res = s.client("station")->post("/v1/records", r.to_json(), "application/json");
    CHECK(res.status == 422);
    CHECK(res.body.find("\"code\":\"1214\"") != std::string::npos);
    CHECK(res.body.find("transport certificate") != std::string::npos);
    CHECK(s.get("/v1/records/" + r.chip_id.str()).status == 404);
    CHECK(s.get("/v1/imei/" + r.imei.str()).status == 404);
  }
}

}  // namespace

TEST_CASE("public DB: 2- and 3-certificate records both stored, cold and with the Device CA remembered") {
  Database db;
  Server s(db, {"--no-log"});
  // Cold: the first record of each shape goes through the full validation.
  refused_each(s, 7100);
  const auto c = s.client("station");
  const Record old_shape = pki().record(7000);
  REQUIRE(c->post("/v1/records", old_shape.to_json(), "application/json").status == 201);
  // Warm: the Device CA is remembered now; the same answers on the short path.
  std::vector<Record> new_shape;
  for (std::uint32_t i = 1; i <= 3; ++i) new_shape.push_back(with_transport(7000 + i));
  for (const auto& r : new_shape) REQUIRE(c->post("/v1/records", r.to_json(), "application/json").status == 201);
  refused_each(s, 7200);
  // A retry of a 3-certificate record is the same content (its hash covers the third certificate).
  CHECK(c->post("/v1/records", new_shape[0].to_json(), "application/json").status == 200);

  // Read back: the third certificate as published, and a valid record whose transport key is found.
  for (const auto& r : new_shape) {
    const auto got = s.get("/v1/imei/" + r.imei.str());
    REQUIRE(got.status == 200);
    const Record back = Record::from_json(got.body);
    CHECK(back.hash() == r.hash());
    REQUIRE(back.certificates.size() == 3);
    CHECK_NOTHROW(validate_record(back, {*pki().root}));
    const auto t = transport_certificate(back);
    REQUIRE(t.has_value());
    CHECK(t->BER_encode() == r.certificates[2]);
  }
  const Record old_back = Record::from_json(s.get("/v1/records/" + old_shape.chip_id.str()).body);
  CHECK(old_back.certificates.size() == 2);
  CHECK_FALSE(transport_certificate(old_back).has_value());
}

// The attacker review (attack1): shapes no station publishes were stored 201. A normal record first,
// so the Device CA is remembered and the fast path sees every odd shape with that CA second; then the
// same on a fresh server, where each goes through the full validation.
TEST_CASE("public DB: odd certificate orders and a transport certificate as the identity are refused 422") {
  Database db;
  for (const bool warm : {true, false}) {
    CAPTURE(warm);
    Server s(db, {"--no-log"});
    const auto c = s.client("station");
    const std::uint32_t base = warm ? 7300 : 7320;
    if (warm) REQUIRE(c->post("/v1/records", with_transport(base).to_json(), "application/json").status == 201);
    std::uint32_t n = base + 1;
    const auto shape = [&n](const std::vector<int>& order) {
      Record r = with_transport(n++);  // [I, C, T]
      const std::vector<Bytes> certs = r.certificates;
      r.certificates.clear();
      for (const int i : order) r.certificates.push_back(certs[static_cast<std::size_t>(i)]);
      return r;
    };
    const std::vector<std::pair<std::string, std::vector<int>>> odd{
        {"[T, C, T]", {2, 1, 2}}, {"[T, C]", {2, 1}},       {"[I, T, C]", {0, 2, 1}},
        {"[I, C, C]", {0, 1, 1}}, {"[I, C, T, T]", {0, 1, 2, 2}}, {"[I, C, C, C, C, T]", {0, 1, 1, 1, 1, 2}}};
    for (const auto& [what, order] : odd) {
      CAPTURE(what);
      const auto res = c->post("/v1/records", shape(order).to_json(), "application/json");
      CHECK(res.status == 422);
    }
  }
}
