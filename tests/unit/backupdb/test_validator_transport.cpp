// backupdb::Validator on records [identity, Device CA, transport] (docs/decisions.md, "The transport
// certificate in the public record"): the remembered-Device-CA path answers as core::validate_record,
// cold and warm, for a good third certificate and for each kind of bad one.
#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <vector>

#include <botan/auto_rng.h>
#include <botan/curve25519.h>
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

struct Pki {
  Botan::AutoSeeded_RNG rng;
  Botan::EC_Group group{"secp256r1"};
  Botan::ECDSA_PrivateKey root_key{rng, group}, ca_key{rng, group}, other_key{rng, group}, device_key{rng, group};
  Botan::Curve25519_PrivateKey x{rng};
  Cert root = make_root_certificate(root_key, "Test Root", "keyline test", rng);
  Cert ca = make_ca_certificate(root, root_key, ca_key, "Test Device CA", "keyline test", 0, rng);
  Cert twin = make_ca_certificate(root, root_key, other_key, "Test Device CA", "keyline test", 0, rng);

  Record record(const ChipId& identity_chip = kChip) {
    Record r;
    r.chip_id = kChip;
    r.imei = kImei;
    r.backup = seal_backup(SecureBytes(32, 0x5A), kChip, SecureBytes{1, 2, 3});
    r.certificates = {issue_identity_certificate_der(ca, ca_key, device_key, kImei, identity_chip, kDefaultHwType, rng),
                      ca.BER_encode(), transport()};
    return r;
  }
  Bytes transport(const ChipId& chip = kChip) {
    return issue_transport_certificate_der(ca, ca_key, x, kImei, chip, kDefaultHwType, rng);
  }
};

Pki& pki() {
  static Pki p;
  return p;
}

std::string outcome(const std::function<void()>& f) {
  try {
    f();
    return "ok";
  } catch (const Error& e) {
    return std::to_string(e.numeric()) + " " + e.what();
  } catch (const std::exception& e) {
    return std::string("exception ") + e.what();
  }
}

// A fresh Validator, one that remembered the CA (from a 3-certificate record), and core: all agree.
std::string same_as_core(const Record& r) {
  const std::string core_says = outcome([&] { validate_record(r, {pki().root}); });
  backupdb::Validator cold({pki().root});
  CHECK(outcome([&] { cold.validate(r); }) == core_says);
  backupdb::Validator warm({pki().root});
  warm.validate(pki().record());
  REQUIRE(warm.cached_cas() == 1);
  CHECK(outcome([&] { warm.validate(r); }) == core_says);
  return core_says;
}

}  // namespace

TEST_CASE("validator transport: a 3-certificate record remembers its CA and takes the short path") {
  backupdb::Validator v({pki().root});
  CHECK_NOTHROW(v.validate(pki().record()));
  CHECK(v.cached_cas() == 1);
  CHECK(same_as_core(pki().record()) == "ok");
}

TEST_CASE("validator transport: every bad third certificate answers as core") {
  Pki& p = pki();
  Record r = p.record();
  SUBCASE("another chip") {
    r.certificates[2] = p.transport(kOtherChip);
    CHECK(same_as_core(r).rfind("1214 ", 0) == 0);
  }
  SUBCASE("a P-256 key") {
    r.certificates[2] = issue_identity_certificate_der(p.ca, p.ca_key, p.device_key, kImei, kChip, kDefaultHwType, p.rng);
    CHECK(same_as_core(r).find("key is not X25519") != std::string::npos);
  }
  SUBCASE("signed under the Device CA's name by another key") {
    r.certificates[2] = issue_transport_certificate_der(p.twin, p.other_key, p.x, kImei, kChip, kDefaultHwType, p.rng);
    CHECK(same_as_core(r).find("is not signed by the Device CA") != std::string::npos);
  }
  SUBCASE("a CA certificate third: no shape the station publishes, refused on both paths") {
    r.certificates[2] = p.twin.BER_encode();
    CHECK(same_as_core(r).find("the third certificate is a CA certificate") != std::string::npos);
  }
  SUBCASE("not DER: core's parse error, not the facts'") {
    r = p.record(kOtherChip);
    r.certificates[2] = Bytes{0x30, 0x03, 1, 2, 3};
    CHECK(same_as_core(r).rfind("1210 ", 0) == 0);
  }
  SUBCASE("the identity's facts fail before the transport is looked at") {
    r = p.record(kOtherChip);
    r.certificates[2] = p.transport(kOtherChip);
    CHECK(same_as_core(r).rfind("1170 ", 0) == 0);
  }
}
