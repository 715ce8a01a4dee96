// The 62-byte log entry (core/record_leaf.h): a known answer computed outside keyline (python3
// hashlib over the bytes written out below), the round trip, and each byte a hostile log could change.
#include <doctest/doctest.h>

#include "keyline/core/error.h"
#include "keyline/core/merkle.h"
#include "keyline/core/record_leaf.h"

using namespace keyline::core;

namespace {

const ChipId kChip = ChipId::parse("4790507200000001A0B1");
const Imei kImei = Imei::parse("490154203237518");
const std::string kHash = "2D711642B726B04401627CA9FBAC32F5C8530FB1903CC4DB02258717921A4881";  // SHA-256("x")
// "KLLE" 01 || chip || IMEI ASCII || hash, written out by hand.
const std::string kEntryHex =
    "4B4C4C4501" "4790507200000001A0B1" "343930313534323033323337353138"
    "2D711642B726B04401627CA9FBAC32F5C8530FB1903CC4DB02258717921A4881";
// python3 -c 'import hashlib;print(hashlib.sha256(b"\0"+bytes.fromhex(E)).hexdigest())'
const std::string kLeafHashHex = "F6E7404A902ABA026C724DA255A18DBB97410CEB8FA40B0E9878092C619ED6DD";

}  // namespace

TEST_CASE("record leaf: the layout of the wire contract, byte for byte") {
  const Bytes entry = encode_record_leaf(kChip, kImei, kHash);
  CHECK(entry.size() == record_leaf_size);
  CHECK(to_hex(entry) == kEntryHex);
  CHECK(encode_record_leaf(kChip, kImei, "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881") == entry);
}

TEST_CASE("record leaf: the leaf hash is RFC 9162's over the entry") {
  const Bytes entry = from_hex(kEntryHex);
  CHECK(to_hex(merkle::to_bytes(merkle::leaf_hash(entry))) == kLeafHashHex);
}

TEST_CASE("record leaf: parse gives back what was encoded") {
  const RecordLeaf leaf = parse_record_leaf(from_hex(kEntryHex));
  CHECK(leaf.chip_id == kChip);
  CHECK(leaf.imei == kImei);
  CHECK(leaf.record_hash_hex() == kHash);
  CHECK(encode_record_leaf(leaf) == from_hex(kEntryHex));
}

TEST_CASE("record leaf: every tampering a log could do is refused") {
  const Bytes good = from_hex(kEntryHex);
  auto refused = [](const Bytes& b) {
    try {
      parse_record_leaf(b);
    } catch (const FormatError& e) {
      return e.code() == ErrorCode::BadRecord;
    }
    return false;
  };
  Bytes b = good;
  b.pop_back();
  CHECK(refused(b));
  b = good;
  b.push_back(0);
  CHECK(refused(b));
  CHECK(refused(Bytes{}));
  b = good;
  b[3] = 'F';
  CHECK(refused(b));  // magic
  b = good;
  b[4] = 0x02;
  CHECK(refused(b));  // version
  b = good;
  b[29] = '9';
  CHECK(refused(b));  // IMEI check digit
  b = good;
  b[20] = 'A';
  CHECK(refused(b));  // IMEI non-digit
}

TEST_CASE("record leaf: a record hash that is not 32 bytes of hex is refused") {
  CHECK_THROWS_AS(encode_record_leaf(kChip, kImei, kHash.substr(2)), FormatError);
  CHECK_THROWS_AS(encode_record_leaf(kChip, kImei, kHash + "00"), FormatError);
  CHECK_THROWS_AS(encode_record_leaf(kChip, kImei, "Z" + kHash.substr(1)), FormatError);
}
