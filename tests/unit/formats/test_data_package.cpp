// Data package: round trip, strict decoding (missing, duplicated, unknown DGIs, bad header, KCV).
#include <doctest/doctest.h>

#include <fstream>
#include <iterator>
#include <string>

#include "keyline/core/data_package.h"
#include "keyline/core/dgi.h"
#include "keyline/core/error.h"
#include "testenv.h"

using namespace keyline::core;

namespace {

DataPackage sample() {
  DataPackage p;
  p.imei = Imei::parse("357805023984942");
  p.station_id = "line-1/station-ä";
  p.issued_at = 1795000000;
  p.identity_cert = Bytes(400, 0x30);
  p.transport_cert = Bytes(300, 0x31);
  p.ca_chain = {Bytes(500, 0x32), Bytes(2, 0x33)};
  p.identity_key = SecureBytes(138, 0x41);
  p.transport_key = SecureBytes(32, 0x42);
  p.comm_key = SecureBytes(32, 0x43);
  p.app_items = {{0x0F01, Bytes{'a', 'p', 'p'}}, {0x0FFF, Bytes{}}};
  return p;
}

std::string decode_error(const SecureBytes& b) {
  try {
    DataPackage::decode(b);
  } catch (const FormatError& e) {
    CHECK(e.code() == ErrorCode::BadDataPackage);
    return e.what();
  }
  return "decoded";
}

std::vector<Dgi> dgis_of(const DataPackage& p) { return decode_dgis(p.encode()); }

}  // namespace

TEST_CASE("data package: round trip, DGI order as documented") {
  const DataPackage p = sample();
  const SecureBytes enc = p.encode();
  const DataPackage q = DataPackage::decode(enc);
  CHECK(q.imei == p.imei);
  CHECK(q.station_id == p.station_id);
  CHECK(q.issued_at == p.issued_at);
  CHECK(q.identity_cert == p.identity_cert);
  CHECK(q.transport_cert == p.transport_cert);
  CHECK(q.ca_chain == p.ca_chain);
  CHECK(q.identity_key == p.identity_key);
  CHECK(q.transport_key == p.transport_key);
  CHECK(q.comm_key == p.comm_key);
  CHECK(q.app_items == p.app_items);
  CHECK(q.encode() == enc);

  const auto dgis = decode_dgis(enc);
  std::vector<std::uint16_t> tags;
  for (const auto& d : dgis) tags.push_back(d.tag);
  CHECK(tags == std::vector<std::uint16_t>{0x0101, 0x0201, 0x0202, 0x0203, 0x8101, 0x8102, 0x8103, 0x9103, 0x0F01, 0x0FFF});
  const Dgi* kcv = find_dgi(dgis, dgi_tag::kcv);
  REQUIRE(kcv != nullptr);
  const Bytes expect_kcv = key_check_value(p.comm_key);
  CHECK(kcv->value == SecureBytes{0x81, 0x03, expect_kcv[0], expect_kcv[1], expect_kcv[2]});
  const Dgi* header = find_dgi(dgis, dgi_tag::header);
  REQUIRE(header != nullptr);
  CHECK(header->value.size() == 1 + 15 + 1 + p.station_id.size() + 8);
  CHECK(std::string(header->value.begin() + 1, header->value.begin() + 16) == "357805023984942");
}

TEST_CASE("data package: key check value and digest") {
  // FIPS-197 Appendix C.3: AES-256 of 00112233...eeff under key 000102...1f is 8ea2b7ca...; for the
  // KCV the block is all zero, so check against an independent known answer instead: AES-256 with
  // the all-zero key on the all-zero block is dc95c078a2408989ad48a21492842087 (NIST AESAVS KAT).
  CHECK(key_check_value(SecureBytes(32, 0)) == Bytes{0xDC, 0x95, 0xC0});
  CHECK(key_check_value(SecureBytes(32, 1)) != key_check_value(SecureBytes(32, 0)));
  CHECK_THROWS_AS(key_check_value(SecureBytes(16, 0)), CryptoError);
  // SHA-256("abc"), FIPS 180-2 Appendix B.1.
  CHECK(to_hex(package_digest(SecureBytes{'a', 'b', 'c'})) ==
        "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD");
}

TEST_CASE("data package: missing DGIs are refused") {
  for (std::uint16_t tag : {0x0101, 0x0201, 0x0202, 0x0203, 0x8101, 0x8102, 0x8103, 0x9103}) {
    CAPTURE(tag);
    std::vector<Dgi> dgis = dgis_of(sample());
    std::vector<Dgi> kept;
    for (auto& d : dgis)
      if (d.tag != tag) kept.push_back(d);
    REQUIRE(kept.size() + 1 == dgis.size());
    CHECK(decode_error(encode_dgis(kept)).find("missing") != std::string::npos);
  }
  CHECK(decode_error({}) != "decoded");
}

TEST_CASE("data package: duplicated and unknown DGIs are refused") {
  for (std::uint16_t tag : {0x0101, 0x0201, 0x8101, 0x8103, 0x9103, 0x0F01}) {
    CAPTURE(tag);
    std::vector<Dgi> dgis = dgis_of(sample());
    const Dgi* d = find_dgi(dgis, tag);
    REQUIRE(d != nullptr);
    dgis.push_back(*d);
    CHECK(decode_error(encode_dgis(dgis)).find("twice") != std::string::npos);
  }
  for (std::uint16_t tag : {0x0102, 0x0F00, 0x1000, 0x8104, 0x9102, 0xFFFF}) {
    CAPTURE(tag);
    std::vector<Dgi> dgis = dgis_of(sample());
    dgis.push_back(Dgi{tag, SecureBytes{1}});
    CHECK(decode_error(encode_dgis(dgis)).find("unknown") != std::string::npos);
  }
  // encode refuses what decode would refuse.
  DataPackage p = sample();
  p.app_items.push_back({0x0F01, Bytes{1}});
  CHECK_THROWS_AS(p.encode(), FormatError);
  p = sample();
  p.app_items.push_back({0x0201, Bytes{1}});
  CHECK_THROWS_AS(p.encode(), FormatError);
}

TEST_CASE("data package: KCV mismatch is refused and the message shows no key byte") {
  std::vector<Dgi> dgis = dgis_of(sample());
  for (auto& d : dgis)
    if (d.tag == dgi_tag::kcv) d.value[4] ^= 0x01;
  const std::string msg = decode_error(encode_dgis(dgis));
  CHECK(msg.find("key check value") != std::string::npos);
  CHECK(msg.find("4343") == std::string::npos);  // comm key bytes are 0x43

  // The key changed instead of the KCV.
  dgis = dgis_of(sample());
  for (auto& d : dgis)
    if (d.tag == dgi_tag::comm_key) d.value[0] ^= 0x80;
  CHECK(decode_error(encode_dgis(dgis)).find("key check value") != std::string::npos);

  // A KCV entry naming another DGI, or of the wrong length.
  dgis = dgis_of(sample());
  for (auto& d : dgis)
    if (d.tag == dgi_tag::kcv) d.value[1] = 0x02;
  CHECK(decode_error(encode_dgis(dgis)) != "decoded");
  dgis = dgis_of(sample());
  for (auto& d : dgis)
    if (d.tag == dgi_tag::kcv) d.value.push_back(0);
  CHECK(decode_error(encode_dgis(dgis)) != "decoded");
}

TEST_CASE("data package: bad header, chain and key sizes") {
  auto with = [](std::uint16_t tag, SecureBytes value) {
    std::vector<Dgi> dgis = dgis_of(sample());
    for (auto& d : dgis)
      if (d.tag == tag) d.value = value;
    return encode_dgis(dgis);
  };
  const SecureBytes header = find_dgi(dgis_of(sample()), dgi_tag::header)->value;
  SecureBytes h = header;
  h[0] = 3;  // version (1 and 2 are known, docs/protocol.md section 9)
  CHECK(decode_error(with(dgi_tag::header, h)).find("version") != std::string::npos);
  h = header;
  h[15] = h[15] == '9' ? '0' : static_cast<std::uint8_t>(h[15] + 1);  // Luhn check digit broken
  CHECK(decode_error(with(dgi_tag::header, h)).find("IMEI") != std::string::npos);
  h = header;
  h.pop_back();
  CHECK(decode_error(with(dgi_tag::header, h)) != "decoded");
  h = header;
  h.push_back(0);
  CHECK(decode_error(with(dgi_tag::header, h)) != "decoded");
  h = header;
  h[17] = 0xFF;  // station id not UTF-8
  CHECK(decode_error(with(dgi_tag::header, h)).find("UTF-8") != std::string::npos);

  CHECK(decode_error(with(dgi_tag::ca_chain, SecureBytes{0, 1, 0, 0, 0, 5, 1})) != "decoded");
  CHECK(decode_error(with(dgi_tag::ca_chain, SecureBytes{0, 0, 9})) != "decoded");
  CHECK(decode_error(with(dgi_tag::ca_chain, SecureBytes{0})) != "decoded");
  CHECK(decode_error(with(dgi_tag::transport_key, SecureBytes(31, 1))) != "decoded");
  CHECK(decode_error(with(dgi_tag::identity_cert, SecureBytes{})) != "decoded");

  // Truncations of the whole package never decode. (Application items are optional, so a cut at the
  // boundary before them would be a valid shorter package: the sample here has none.)
  DataPackage no_apps = sample();
  no_apps.app_items.clear();
  const SecureBytes enc = no_apps.encode();
  for (std::size_t n = 0; n < enc.size(); ++n) {
    CAPTURE(n);
    CHECK(decode_error(SecureBytes(enc.begin(), enc.begin() + static_cast<std::ptrdiff_t>(n))) != "decoded");
  }
  CHECK(decode_error(SecureBytes(enc.begin(), enc.end() - 1)) != "decoded");
}

TEST_CASE("data package: a package built by an independent implementation decodes") {
  // tests/fuzz/corpus/data_package/valid was built in Python from data_package.h, with the KCV from
  // Python's `cryptography` AES-256-ECB: it checks the header layout and the KCV definition.
  const std::string path = keyline::test::source_dir() + "/tests/fuzz/corpus/data_package/valid";
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot read " << path);
  const SecureBytes bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const DataPackage p = DataPackage::decode(bytes);
  CHECK(p.imei.str() == "490154203237518");
  CHECK(p.station_id == "line-1");
  CHECK(p.issued_at == 1795000000u);
  CHECK(p.ca_chain.size() == 1);
  CHECK(p.comm_key == SecureBytes(32, 0x43));
  CHECK(p.encode() == bytes);
}
