// backupdb::stored_json writes the GET body itself (not through Poco::JSON): it must stay byte for
// byte core::Record::to_json, which clients and the read-path tests know.
#include <doctest/doctest.h>

#include <string>

#include "keyline/backupdb/store.h"
#include "keyline/core/record.h"

using namespace keyline;
using namespace keyline::core;

TEST_CASE("stored_json: byte for byte Record::to_json") {
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
      CHECK(backupdb::stored_json(r, r.hash(), at) == r.to_json(at));
      CHECK(Record::from_json(backupdb::stored_json(r, r.hash(), at)).hash() == r.hash());
    }
  }
  // Characters a record does not hold take Poco's path and still agree.
  for (const std::string& odd : {std::string("a\x01z"), std::string("caf\xC3\xA9"), std::string("q\"b\\s/t\tn\n")})
    CHECK(backupdb::stored_json(r, r.hash(), odd) == r.to_json(odd));
}

TEST_CASE("publish path: the hash from_json hands back is Record::hash, with and without record_hash") {
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
