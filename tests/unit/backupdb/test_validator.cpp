// backupdb::Validator: the same answer (type, code, message) as core::validate_record for every
// record, with and without a remembered Device CA, and a Device CA is remembered only when a full
// validation proved it sits directly below an anchor.
#include <doctest/doctest.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>

#include "keyline/backupdb/validator.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/record.h"

using namespace keyline;
using namespace keyline::core;
using Cert = Botan::X509_Certificate;

namespace {

const ChipId kChip = ChipId::parse("4790507200000001A0B1");
const ChipId kOtherChip = ChipId::parse("4790507200000002A0B1");
const Imei kImei = Imei::parse("490154203237518");
const Imei kOtherImei = Imei::parse("357805023984942");

struct Pki {
  Botan::AutoSeeded_RNG rng;
  Botan::EC_Group group{"secp256r1"};
  Botan::ECDSA_PrivateKey root_key{rng, group}, ca_key{rng, group}, device_key{rng, group};
  Cert root = make_root_certificate(root_key, "Test Root", "keyline test", rng);
  Cert ca = make_ca_certificate(root, root_key, ca_key, "Test Device CA", "keyline test", 0, rng);

  Record record_from(const Cert& issuer, const Botan::Private_Key& issuer_key, const Cert& attached,
                     const Imei& cert_imei = kImei, const ChipId& cert_chip = kChip,
                     const ChipId& backup_chip = kChip) {
    Record r;
    r.chip_id = kChip;
    r.imei = kImei;
    r.backup = seal_backup(SecureBytes(32, 0x5A), backup_chip, SecureBytes{1, 2, 3});
    r.certificates = {
        issue_identity_certificate(issuer, issuer_key, device_key, cert_imei, cert_chip, kDefaultHwType, rng)
            .BER_encode(),
        attached.BER_encode()};
    return r;
  }
  Record record(const Imei& cert_imei = kImei, const ChipId& cert_chip = kChip, const ChipId& backup_chip = kChip) {
    return record_from(ca, ca_key, ca, cert_imei, cert_chip, backup_chip);
  }
};

Pki& pki() {
  static Pki p;
  return p;
}

// What a validation did, as text: "ok", or the error's type, code and message.
std::string outcome(const std::function<void()>& f) {
  try {
    f();
    return "ok";
  } catch (const FormatError& e) {
    return "FormatError " + std::to_string(e.numeric()) + " " + e.what();
  } catch (const Error& e) {
    return "Error " + std::to_string(e.numeric()) + " " + e.what();
  } catch (const std::exception& e) {
    return std::string("exception ") + e.what();
  }
}

// Validates with `v` and with core under v's anchors: checks that both say the same, returns it.
std::string agrees_with_core(backupdb::Validator& v, const Record& r) {
  const std::string says = outcome([&] { v.validate(r); });
  CHECK(says == outcome([&] { validate_record(r, v.anchors()); }));
  return says;
}

// Validates with a fresh Validator, with one that has remembered the CA, and with core: all agree.
std::string same_as_core(const Record& r, const std::vector<Cert>& anchors, const Record& warm_up) {
  const std::string core_says = outcome([&] { validate_record(r, anchors); });
  backupdb::Validator cold(anchors);
  CHECK(outcome([&] { cold.validate(r); }) == core_says);
  backupdb::Validator warm(anchors);
  warm.validate(warm_up);
  REQUIRE(warm.cached_cas() == 1);
  CHECK(outcome([&] { warm.validate(r); }) == core_says);
  CHECK(outcome([&] { warm.validate(r); }) == core_says);  // and again, after whatever it learnt
  return core_says;
}

}  // namespace

TEST_CASE("validator: remembers the Device CA after a full validation and still checks every leaf") {
  Pki& p = pki();
  backupdb::Validator v({p.root});
  CHECK_NOTHROW(v.validate(p.record()));
  CHECK(v.cached_cas() == 1);
  CHECK_NOTHROW(v.validate(p.record()));  // the short path
  CHECK(v.cached_cas() == 1);
  // A leaf that only claims the CA's name (a rogue key under the same DN) is refused as before.
  Botan::ECDSA_PrivateKey rogue_key(p.rng, p.group);
  const Cert rogue = make_ca_certificate(p.root, rogue_key, rogue_key, "Test Device CA", "keyline test", 0, p.rng);
  const Record forged = p.record_from(rogue, rogue_key, p.ca);
  const std::string msg = agrees_with_core(v, forged);
  CHECK(msg.find("chain does not lead to a trusted root") != std::string::npos);
}

TEST_CASE("validator: every failed check answers as core::validate_record") {
  Pki& p = pki();
  const Record good = p.record();
  CHECK(same_as_core(good, {p.root}, good) == "ok");
  CHECK(same_as_core(p.record(kImei, kOtherChip), {p.root}, good).find("differs from record chip ID") !=
        std::string::npos);
  CHECK(same_as_core(p.record(kOtherImei), {p.root}, good).find("certificate IMEI") != std::string::npos);
  CHECK(same_as_core(p.record(kImei, kChip, kOtherChip), {p.root}, good).find("backup package names chip") !=
        std::string::npos);
  Record not_a_backup = good;
  not_a_backup.backup = Bytes(100, 0);
  CHECK(same_as_core(not_a_backup, {p.root}, good) != "ok");
  Record not_der = good;
  not_der.certificates[0] = Bytes{0x30, 0x03, 1, 2, 3};
  CHECK(same_as_core(not_der, {p.root}, good).rfind("FormatError", 0) == 0);
  Record leaf_only = good;
  leaf_only.certificates.pop_back();
  CHECK(same_as_core(leaf_only, {p.root}, good).find("trusted root") != std::string::npos);
  Record three = good;
  three.certificates.push_back(p.root.BER_encode());
  // The root third is no shape the station publishes ([identity, Device CA, transport]).
  CHECK(same_as_core(three, {p.root}, good).find("the third certificate is a CA certificate") != std::string::npos);
  Botan::ECDSA_PrivateKey other_key(p.rng, p.group);
  const Cert other_root = make_root_certificate(other_key, "Other Root", "elsewhere", p.rng);
  backupdb::Validator elsewhere({other_root});
  const std::string msg = agrees_with_core(elsewhere, good);
  CHECK(msg.find("trusted root") != std::string::npos);
  CHECK(elsewhere.cached_cas() == 0);
}

TEST_CASE("validator: a leaf issued by the root itself, with a CA attached, is not taken as proof for that CA") {
  Pki& p = pki();
  backupdb::Validator v({p.root});
  const Record by_root = p.record_from(p.root, p.root_key, p.ca);
  agrees_with_core(v, by_root);
  CHECK(v.cached_cas() == 0);
}

TEST_CASE("validator: an anchor's path length is checked at the CA's depth, never remembered past it") {
  Pki& p = pki();
  // anchor `mid` allows no CA below it, so [leaf, ca2] fails at depth 1 while ca2 alone would pass.
  Botan::ECDSA_PrivateKey mid_key(p.rng, p.group), ca2_key(p.rng, p.group);
  const Cert mid = make_ca_certificate(p.root, p.root_key, mid_key, "Mid CA", "keyline test", 0, p.rng);
  const Cert ca2 = make_ca_certificate(mid, mid_key, ca2_key, "Device CA 2", "keyline test", 0, p.rng);
  const Record r = p.record_from(ca2, ca2_key, ca2);
  backupdb::Validator v({mid});
  for (int i = 0; i < 2; ++i) {
    const std::string msg = agrees_with_core(v, r);
    CHECK(msg.find("path length") != std::string::npos);
  }
  CHECK(v.cached_cas() == 0);
}

TEST_CASE("validator: a CA with an anchor's name is never remembered") {
  Pki& p = pki();
  Botan::ECDSA_PrivateKey twin_key(p.rng, p.group);
  const Cert twin = make_ca_certificate(p.root, p.root_key, twin_key, "Test Root", "keyline test", 0, p.rng);
  REQUIRE(twin.subject_dn() == p.root.subject_dn());
  const Record r = p.record_from(twin, twin_key, twin);
  backupdb::Validator v({p.root});
  for (int i = 0; i < 2; ++i) agrees_with_core(v, r);
  CHECK(v.cached_cas() == 0);
}

TEST_CASE("validator: the kept verifiers answer right after refusals, and from several threads at once") {
  Pki& p = pki();
  backupdb::Validator v({p.root});
  const Record good = p.record();
  CHECK_NOTHROW(v.validate(good));
  REQUIRE(v.cached_cas() == 1);
  // A leaf under the CA's name but signed by another key, and a leaf whose signature is not DER.
  Botan::ECDSA_PrivateKey rogue_key(p.rng, p.group);
  const Cert rogue = make_ca_certificate(p.root, rogue_key, rogue_key, "Test Device CA", "keyline test", 0, p.rng);
  const Record forged = p.record_from(rogue, rogue_key, p.ca);
  Record garbled = p.record();
  garbled.certificates[0][garbled.certificates[0].size() - 3] ^= 0x80;  // a bit of s: wrong, still DER
  Record not_der_sig = p.record();
  {
    Bytes& der = not_der_sig.certificates[0];
    const auto sig = Cert(der).signature();  // SEQUENCE { r, s }, the last bytes of the certificate
    REQUIRE(sig.size() < der.size());
    REQUIRE(der[der.size() - sig.size()] == 0x30);
    der[der.size() - sig.size()] = 0x31;  // a SET: the signature no longer decodes
  }
  const std::string forged_says = outcome([&] { validate_record(forged, {p.root}); });
  const std::string garbled_says = outcome([&] { validate_record(garbled, {p.root}); });
  const std::string not_der_says = outcome([&] { validate_record(not_der_sig, {p.root}); });
  REQUIRE(forged_says != "ok");
  REQUIRE(garbled_says != "ok");
  REQUIRE(not_der_says != "ok");
  for (int i = 0; i < 3; ++i) {
    CHECK(outcome([&] { v.validate(forged); }) == forged_says);
    CHECK(outcome([&] { v.validate(garbled); }) == garbled_says);
    CHECK(outcome([&] { v.validate(not_der_sig); }) == not_der_says);
    CHECK(outcome([&] { v.validate(good); }) == "ok");
    CHECK(outcome([&] { v.validate(p.record()); }) == "ok");
  }
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        const bool bad = (i + t) % 3 == 0;
        const std::string got = outcome([&] { v.validate(bad ? forged : good); });
        if (got != (bad ? forged_says : std::string("ok"))) ++wrong;
      }
    });
  for (auto& th : threads) th.join();
  CHECK(wrong == 0);
  CHECK(v.cached_cas() == 1);
}
