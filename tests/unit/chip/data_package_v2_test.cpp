// core/data_package.h version 2: keys generated in the device. The station sends the package without
// DGIs 8101/8102, the device seals it with them; never one of them alone.
#include <doctest/doctest.h>

#include "keyline/core/data_package.h"
#include "keyline/core/dgi.h"
#include "keyline/core/error.h"

using namespace keyline::core;

namespace {

DataPackage as_sent() {
  DataPackage p;
  p.keys_in_device = true;
  p.imei = Imei::parse("490154203237518");
  p.station_id = "station-1";
  p.issued_at = 1700000000;
  p.identity_cert = Bytes{0x30, 0x01, 0x01};
  p.transport_cert = Bytes{0x30, 0x01, 0x02};
  p.ca_chain = {Bytes{0x30, 0x01, 0x03}};
  p.comm_key = SecureBytes(32, 0x11);
  p.app_items = {{0x0F01, Bytes{1, 2, 3}}};
  return p;
}

DataPackage as_sealed() {
  DataPackage p = as_sent();
  p.identity_key = SecureBytes(70, 0x22);
  p.transport_key = SecureBytes(32, 0x33);
  return p;
}

bool has_tag(const SecureBytes& enc, std::uint16_t tag) { return find_dgi(decode_dgis(enc), tag) != nullptr; }

}  // namespace

TEST_CASE("data package v2: as sent (no 8101/8102) and as sealed both decode, with version 2") {
  const auto sent = as_sent().encode();
  CHECK(sent[3] == kDataPackageVersionDeviceKeys);  // DGI 0101 tag (2), length (1), version
  CHECK_FALSE(has_tag(sent, dgi_tag::identity_key));
  CHECK_FALSE(has_tag(sent, dgi_tag::transport_key));
  const auto d = DataPackage::decode(sent);
  CHECK(d.keys_in_device);
  CHECK(d.identity_key.empty());
  CHECK(d.encode() == sent);

  const auto sealed = as_sealed().encode();
  CHECK(has_tag(sealed, dgi_tag::identity_key));
  const auto s = DataPackage::decode(sealed);
  CHECK(s.keys_in_device);
  CHECK(s.transport_key == SecureBytes(32, 0x33));
  CHECK(s.encode() == sealed);
}

TEST_CASE("data package v2: one key without the other is refused, in encode and in decode") {
  auto p = as_sealed();
  p.transport_key.clear();
  CHECK_THROWS_AS(p.encode(), FormatError);
  p = as_sealed();
  p.identity_key.clear();
  CHECK_THROWS_AS(p.encode(), FormatError);
  // On the wire: drop DGI 8102 from a sealed package.
  auto dgis = decode_dgis(as_sealed().encode());
  std::vector<Dgi> without;
  for (auto& d : dgis)
    if (d.tag != dgi_tag::transport_key) without.push_back(d);
  CHECK_THROWS_AS(DataPackage::decode(encode_dgis(without)), FormatError);
}

TEST_CASE("data package v1: the keys stay required, a v1 header without them is refused") {
  auto p = as_sent();
  p.keys_in_device = false;
  CHECK_THROWS_AS(p.encode(), FormatError);
  // A v2 package as sent, its header version byte changed to 1.
  auto dgis = decode_dgis(as_sent().encode());
  for (auto& d : dgis)
    if (d.tag == dgi_tag::header) d.value[0] = kDataPackageVersion;
  CHECK_THROWS_AS(DataPackage::decode(encode_dgis(dgis)), FormatError);
}

TEST_CASE("station_digest: v2 is the digest of the package as sent, whatever keys the device added") {
  const auto sent = as_sent();
  const auto sealed = as_sealed();
  CHECK(station_digest(sealed) == package_digest(sent.encode()));
  CHECK(station_digest(sent) == package_digest(sent.encode()));
  auto other = as_sealed();
  other.identity_key[0] ^= 1;
  CHECK(station_digest(other) == station_digest(sealed));
  auto changed = as_sealed();
  changed.station_id = "station-2";
  CHECK(station_digest(changed) != station_digest(sealed));
  // v1: the digest of the whole encoding, keys included.
  auto v1 = as_sealed();
  v1.keys_in_device = false;
  CHECK(station_digest(v1) == package_digest(v1.encode()));
  CHECK(station_digest(v1) != station_digest(sealed));
}
