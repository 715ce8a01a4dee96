// The transparency log's entry for a public DB record (docs/transparency.md, "The public DB's log"):
// 62 bytes, "KLLE" || version 01 || chip ID (10 bytes) || IMEI (15 ASCII digits) || record hash (32
// bytes, SHA-256 of the record's canonical encoding, core::Record::hash()). A fixed small entry, so
// every entry is far below C2SP tlog-tiles' 65,535-byte bound ("Log entries"); the record itself is
// fetched from /v1/records and checked against record_hash. Leaf hash: RFC 9162 section 2.1.1,
// merkle::leaf_hash(entry).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"
#include "keyline/core/imei.h"

namespace keyline::core {

constexpr std::size_t record_leaf_size = 62;
constexpr std::uint8_t record_leaf_version = 0x01;

struct RecordLeaf {
  ChipId chip_id;
  Imei imei = Imei::parse("490154203237518");
  std::array<std::uint8_t, 32> record_hash{};
  std::string record_hash_hex() const;  // upper-case, as Record::hash() prints it
};

// record_hash_hex: 64 hex digits (either case). Throws FormatError(BadRecord) for another length
// or a non-hex digit.
Bytes encode_record_leaf(const ChipId& chip_id, const Imei& imei, const std::string& record_hash_hex);
inline Bytes encode_record_leaf(const RecordLeaf& leaf) {
  return encode_record_leaf(leaf.chip_id, leaf.imei, leaf.record_hash_hex());
}
// Strict: exactly 62 bytes, the magic, version 01, a Luhn-valid IMEI of 15 ASCII digits.
// Throws FormatError(BadRecord).
RecordLeaf parse_record_leaf(const std::uint8_t* data, std::size_t len);
inline RecordLeaf parse_record_leaf(const Bytes& entry) { return parse_record_leaf(entry.data(), entry.size()); }

}  // namespace keyline::core
