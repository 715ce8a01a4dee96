// docs/transparency.md, "The public DB's log".
#include "keyline/core/record_leaf.h"

#include <algorithm>
#include <string_view>

#include "keyline/core/error.h"

namespace keyline::core {
namespace {

constexpr std::array<std::uint8_t, 4> magic{'K', 'L', 'L', 'E'};
constexpr std::size_t imei_digits = 15;
constexpr std::size_t hash_bytes = 32;
constexpr std::size_t chip_offset = magic.size() + 1;
constexpr std::size_t imei_offset = chip_offset + kChipIdSize;
constexpr std::size_t hash_offset = imei_offset + imei_digits;
static_assert(hash_offset + hash_bytes == record_leaf_size, "62-byte entry");

[[noreturn]] void bad(const std::string& why) { throw FormatError(ErrorCode::BadRecord, "record leaf: " + why); }

}  // namespace

std::string RecordLeaf::record_hash_hex() const { return to_hex(record_hash.data(), record_hash.size()); }

Bytes encode_record_leaf(const ChipId& chip_id, const Imei& imei, const std::string& record_hash_hex) {
  if (record_hash_hex.size() != 2 * hash_bytes) bad("record hash is not 64 hex digits");
  Bytes hash;
  try {
    hash = from_hex(record_hash_hex);
  } catch (const FormatError&) {
    bad("record hash is not hex");
  }
  Bytes out(magic.begin(), magic.end());
  out.push_back(record_leaf_version);
  out.insert(out.end(), chip_id.bytes().begin(), chip_id.bytes().end());
  out.insert(out.end(), imei.str().begin(), imei.str().end());
  out.insert(out.end(), hash.begin(), hash.end());
  return out;
}

RecordLeaf parse_record_leaf(const std::uint8_t* data, std::size_t len) {
  if (len != record_leaf_size) bad("not 62 bytes");
  if (!std::equal(magic.begin(), magic.end(), data)) bad("no KLLE magic");
  if (data[magic.size()] != record_leaf_version) bad("unknown version");
  const std::string_view digits(reinterpret_cast<const char*>(data + imei_offset), imei_digits);
  if (!Imei::is_valid(digits)) bad("IMEI is not 15 digits with a valid check digit");
  RecordLeaf leaf;
  leaf.chip_id = ChipId::from_bytes(data + chip_offset, kChipIdSize);
  leaf.imei = Imei::parse(digits);
  std::copy(data + hash_offset, data + hash_offset + hash_bytes, leaf.record_hash.begin());
  return leaf;
}

}  // namespace keyline::core
