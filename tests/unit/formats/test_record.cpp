// Public backup DB record: canonical hash, JSON form, and validate_record with real certificates
// issued in process (cert_profile.h helpers, P-256 keys).
#include <doctest/doctest.h>

#include <string>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pem.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include <sstream>

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

Record fixed_record() {
  Record r;
  r.chip_id = kChip;
  r.imei = kImei;
  for (std::uint8_t i = 0; i < 50; ++i) r.backup.push_back(i);
  r.certificates = {Bytes{0x30, 0x03, 1, 2, 3}, Bytes{0x30, 0x00}};
  return r;
}

// One manufacturer PKI and a device, made once for all record tests.
struct Pki {
  Botan::AutoSeeded_RNG rng;
  Botan::EC_Group group{"secp256r1"};
  Botan::ECDSA_PrivateKey root_key{rng, group};
  Botan::ECDSA_PrivateKey ca_key{rng, group};
  Botan::ECDSA_PrivateKey device_key{rng, group};
  Botan::ECDSA_PrivateKey other_root_key{rng, group};
  Botan::X509_Certificate root = make_root_certificate(root_key, "Test Root", "keyline test", rng);
  Botan::X509_Certificate ca = make_ca_certificate(root, root_key, ca_key, "Test Device CA", "keyline test", 0, rng);
  Botan::X509_Certificate other_root = make_root_certificate(other_root_key, "Other Root", "elsewhere", rng);

  Botan::X509_Certificate identity(const Imei& imei, const ChipId& chip) {
    return issue_identity_certificate(ca, ca_key, device_key, imei, chip, kDefaultHwType, rng);
  }

  Record record(const Imei& cert_imei = kImei, const ChipId& cert_chip = kChip, const ChipId& backup_chip = kChip) {
    Record r;
    r.chip_id = kChip;
    r.imei = kImei;
    r.backup = seal_backup(SecureBytes(32, 0x5A), backup_chip, SecureBytes{1, 2, 3});
    r.certificates = {identity(cert_imei, cert_chip).BER_encode(), ca.BER_encode()};
    return r;
  }
};

Pki& pki() {
  static Pki p;
  return p;
}

std::string validate_error(const Record& r, const std::vector<Botan::X509_Certificate>& anchors, ErrorCode expect) {
  try {
    validate_record(r, anchors);
  } catch (const Error& e) {
    CHECK(e.code() == expect);
    return e.what();
  }
  FAIL("record validated");
  return {};
}

std::string json_error(const std::string& json) {
  try {
    Record::from_json(json);
  } catch (const FormatError& e) {
    CHECK(e.code() == ErrorCode::BadRecord);
    return e.what();
  }
  return "parsed";
}

void replace(std::string& s, const std::string& from, const std::string& to) {
  const auto pos = s.find(from);
  REQUIRE_MESSAGE(pos != std::string::npos, from);
  s.replace(pos, from.size(), to);
}

}  // namespace

TEST_CASE("record: hash is the documented canonical encoding, stable and content-sensitive") {
  const Record r = fixed_record();
  // Computed independently from the encoding documented in record.h (Python hashlib over
  // "KLRC" || 01 || chip ID || IMEI || u32 len || backup || u16 count || {u32 len || DER}*).
  CHECK(r.hash() == "B6E69CEAF558EEA024B048CB4F44F78221C8DD2AA54E5F403A9B43AB8685BF8D");
  CHECK(r.hash() == fixed_record().hash());

  Record c = r;
  c.chip_id = kOtherChip;
  CHECK(c.hash() != r.hash());
  c = r;
  c.imei = kOtherImei;
  CHECK(c.hash() != r.hash());
  c = r;
  c.backup.back() ^= 1;
  CHECK(c.hash() != r.hash());
  c = r;
  c.certificates[1].push_back(0);
  CHECK(c.hash() != r.hash());
  c = r;
  std::swap(c.certificates[0], c.certificates[1]);
  CHECK(c.hash() != r.hash());
  // Moving a byte across a field boundary changes the hash (length prefixes).
  c = r;
  c.certificates[0].insert(c.certificates[0].begin(), c.backup.back());
  c.backup.pop_back();
  CHECK(c.hash() != r.hash());
}

TEST_CASE("record: JSON round trip") {
  Record r = pki().record();
  const std::string json = r.to_json();
  CHECK(json.find("\"record_hash\"") != std::string::npos);
  CHECK(json.find("published_at") == std::string::npos);
  CHECK(json.find("BEGIN CERTIFICATE") != std::string::npos);
  const Record back = Record::from_json(json);
  CHECK(back.chip_id == r.chip_id);
  CHECK(back.imei == r.imei);
  CHECK(back.backup == r.backup);
  CHECK(back.certificates == r.certificates);
  CHECK(back.hash() == r.hash());

  const std::string with_time = r.to_json("2026-11-23T18:00:00Z");
  CHECK(with_time.find("\"published_at\"") != std::string::npos);
  CHECK(Record::from_json(with_time).hash() == r.hash());
  // record_hash is optional on input (a station may leave it out), and checked when present.
  const Record fixed = fixed_record();
  std::string no_hash = fixed.to_json();
  replace(no_hash, ",\"record_hash\":\"" + fixed.hash() + "\"", "");
  CHECK(Record::from_json(no_hash).hash() == fixed.hash());
}

TEST_CASE("record: JSON errors") {
  const Record r = fixed_record();
  const std::string good = r.to_json();
  CHECK(json_error(good) == "parsed");
  CHECK(json_error("") != "parsed");
  CHECK(json_error("[]") != "parsed");
  CHECK(json_error("\"x\"") != "parsed");
  CHECK(json_error("{") != "parsed");
  CHECK(json_error("{}").find("missing") != std::string::npos);
  CHECK(json_error(std::string(100000, '[')) != "parsed");

  std::string j = good;
  replace(j, r.hash(), std::string(64, 'A'));
  CHECK(json_error(j).find("record_hash") != std::string::npos);
  j = good;
  replace(j, kChip.str(), "4790507200000001a0b1");  // lower case is not the canonical form
  CHECK(json_error(j).find("chip_id") != std::string::npos);
  j = good;
  replace(j, kChip.str(), "4790507200000001A0");
  CHECK(json_error(j).find("chip_id") != std::string::npos);
  j = good;
  replace(j, kImei.str(), "490154203237519");  // Luhn check digit wrong
  CHECK(json_error(j).find("imei") != std::string::npos);
  j = good;
  replace(j, "\"imei\":\"" + kImei.str() + "\"", "\"imei\":490154203237518");
  CHECK(json_error(j).find("imei") != std::string::npos);
  j = good;
  replace(j, "\"backup\":\"", "\"backup\":\"!");
  CHECK(json_error(j).find("backup") != std::string::npos);
  j = good;
  replace(j, "BEGIN CERTIFICATE", "BEGIN PRIVATE KEY");
  CHECK(json_error(j).find("certificate") != std::string::npos);
  j = good;
  replace(j, "\"certificates\":[", "\"certificates\":[1,");
  CHECK(json_error(j).find("certificate") != std::string::npos);

  Record none = r;
  none.certificates.clear();
  std::string empty_certs = none.to_json();
  CHECK(json_error(empty_certs).find("certificates") != std::string::npos);
}

TEST_CASE("record: validate_record accepts a well-formed record") {
  const Record r = pki().record();
  CHECK_NOTHROW(validate_record(r, {pki().root}));
  CHECK_NOTHROW(validate_record(r, {pki().other_root, pki().root}));
  CHECK_NOTHROW(validate_record(Record::from_json(r.to_json()), {pki().root}));
}

TEST_CASE("record: validate_record names each failed check") {
  Pki& p = pki();
  SUBCASE("chain to an untrusted root") {
    const std::string msg = validate_error(p.record(), {p.other_root}, ErrorCode::ChainInvalid);
    CHECK(msg.find("chain does not lead to a trusted root") != std::string::npos);
  }
  SUBCASE("chain without the Device CA") {
    Record r = p.record();
    r.certificates.pop_back();
    CHECK(validate_error(r, {p.root}, ErrorCode::ChainInvalid).find("trusted root") != std::string::npos);
  }
  SUBCASE("leaf signed by someone else") {
    Record r = p.record();
    Botan::ECDSA_PrivateKey rogue_key(p.rng, p.group);
    const auto rogue_ca = make_ca_certificate(p.other_root, p.other_root_key, rogue_key, "Test Device CA",
                                              "keyline test", 0, p.rng);
    r.certificates[0] =
        issue_identity_certificate(rogue_ca, rogue_key, p.device_key, kImei, kChip, kDefaultHwType, p.rng)
            .BER_encode();
    CHECK(validate_error(r, {p.root}, ErrorCode::ChainInvalid).find("trusted root") != std::string::npos);
  }
  SUBCASE("certificate for another chip") {
    const std::string msg = validate_error(p.record(kImei, kOtherChip), {p.root}, ErrorCode::BadRecord);
    CHECK(msg.find("certificate chip ID " + kOtherChip.str() + " differs from record chip ID " + kChip.str()) !=
          std::string::npos);
  }
  SUBCASE("certificate for another IMEI") {
    const std::string msg = validate_error(p.record(kOtherImei), {p.root}, ErrorCode::BadRecord);
    CHECK(msg.find("certificate IMEI " + kOtherImei.str() + " differs") != std::string::npos);
  }
  SUBCASE("backup package made for another chip") {
    const std::string msg = validate_error(p.record(kImei, kChip, kOtherChip), {p.root}, ErrorCode::BadBackupPackage);
    CHECK(msg.find("backup package names chip " + kOtherChip.str()) != std::string::npos);
  }
  SUBCASE("backup that is not a backup package") {
    Record r = p.record();
    r.backup = Bytes(100, 0);
    validate_error(r, {p.root}, ErrorCode::BadBackupPackage);
  }
  SUBCASE("no certificates, or bytes that are not a certificate") {
    Record r = p.record();
    r.certificates.clear();
    validate_error(r, {p.root}, ErrorCode::BadRecord);
    r = p.record();
    r.certificates[0] = Bytes{0x30, 0x03, 1, 2, 3};
    validate_error(r, {p.root}, ErrorCode::BadCertificate);
  }
}

namespace {
// What Record::to_json wrote when it went through Poco::JSON, the form clients and stored records know.
std::string poco_json(const Record& r, const std::string& hash, const std::string& published_at) {
  Poco::JSON::Object obj(Poco::JSON_PRESERVE_KEY_ORDER);
  obj.set("chip_id", r.chip_id.str());
  obj.set("imei", r.imei.str());
  obj.set("backup", to_base64(r.backup));
  Poco::JSON::Array certs;
  for (const auto& der : r.certificates) certs.add(Botan::PEM_Code::encode(der, "CERTIFICATE"));
  obj.set("certificates", certs);
  obj.set("record_hash", hash);
  if (!published_at.empty()) obj.set("published_at", published_at);
  std::ostringstream out;
  obj.stringify(out);
  return out.str();
}
}  // namespace

TEST_CASE("to_json: byte for byte what Poco::JSON writes, with the hash given or computed") {
  Record r;
  r.chip_id = ChipId::parse("4790507200000001A0B1");
  r.imei = Imei::parse("490154203237518");
  for (int n : {0, 1, 2, 3, 57, 300}) {
    r.backup.clear();
    for (int i = 0; i < n; ++i) r.backup.push_back(static_cast<std::uint8_t>(i * 37 + 11));
    Bytes der;
    for (int i = 0; i < 40 + n; ++i) der.push_back(static_cast<std::uint8_t>(255 - i));
    r.certificates = {der, Bytes{0x30, 0x00}, Bytes(700, 0xFB)};
    for (const char* at : {"", "2026-11-23T19:02:50Z"}) {
      CHECK(r.to_json(at) == poco_json(r, r.hash(), at));
      CHECK(r.to_json_hashed(r.hash(), at) == r.to_json(at));
      CHECK(Record::from_json(r.to_json(at)).hash() == r.hash());
    }
  }
  // Characters a record's fields cannot hold (only published_at is free text) take Poco's path.
  for (const std::string& odd : {std::string("a\x01z"), std::string("caf\xC3\xA9"), std::string("q\"b\\s/t\tn\n")})
    CHECK(r.to_json(odd) == poco_json(r, r.hash(), odd));
}
TEST_CASE("from_json hands back Record::hash, with and without record_hash in the text") {
  Record r;
  r.chip_id = ChipId::parse("4790507200000001A0B1");
  r.imei = Imei::parse("490154203237518");
  r.backup = Bytes(57, 0x42);
  r.certificates = {Bytes(300, 0x30), Bytes{0x30, 0x00}};
  const std::string with_hash = r.to_json();
  std::string without_hash = with_hash;
  const auto at = without_hash.find(",\"record_hash\"");
  REQUIRE(at != std::string::npos);
  without_hash.erase(at, std::string(",\"record_hash\":\"").size() + 64 + 1);  // the member and its 64 hex digits
  REQUIRE(without_hash.find("record_hash") == std::string::npos);
  for (const std::string& json : {with_hash, without_hash, r.to_json("2026-11-23T19:02:50Z")}) {
    std::string h = "stale";
    const Record back = Record::from_json(json, &h);
    CHECK(h == r.hash());
    CHECK(back.hash() == h);
  }
  // A refused record leaves nothing behind that could be mistaken for its hash.
  std::string h;
  std::string wrong = with_hash;
  wrong[wrong.find("\"record_hash\":\"") + 15] ^= 1;
  CHECK_THROWS(Record::from_json(wrong, &h));
  CHECK(h.empty());
}
