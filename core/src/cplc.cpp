#include "keyline/core/cplc.h"

#include "keyline/core/error.h"

namespace keyline::core {

namespace {

// CPLC layout (GlobalPlatform Card Specification v2.3, GET DATA 9F7F): offsets of the chip-ID fields.
constexpr std::size_t kFabricatorAt = 0;
constexpr std::size_t kTypeAt = 2;
constexpr std::size_t kSerialAt = 12;
constexpr std::size_t kBatchAt = 16;
constexpr std::uint8_t kTag[2] = {0x9F, 0x7F};
constexpr std::size_t kChipIdHexDigits = kChipIdSize * 2;

bool hex_digit(char c, bool upper_only) noexcept {
  if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F')) return true;
  return !upper_only && c >= 'a' && c <= 'f';
}

bool chip_id_text(std::string_view hex, bool upper_only) noexcept {
  if (hex.size() != kChipIdHexDigits) return false;
  for (char c : hex)
    if (!hex_digit(c, upper_only)) return false;
  return true;
}

}  // namespace

ChipId ChipId::parse(std::string_view hex) {
  if (!chip_id_text(hex, false)) throw FormatError(ErrorCode::BadChipId, "chip ID must be exactly 20 hex digits");
  const Bytes b = from_hex(hex);
  return from_bytes(b.data(), b.size());
}

ChipId ChipId::from_bytes(const std::uint8_t* b, std::size_t len) {
  if (len != kChipIdSize)
    throw FormatError(ErrorCode::BadChipId, "chip ID must be 10 bytes, got " + std::to_string(len));
  ChipId id;
  for (std::size_t i = 0; i < kChipIdSize; ++i) id.m_bytes[i] = b[i];
  return id;
}

bool ChipId::is_valid(std::string_view hex) noexcept { return chip_id_text(hex, true); }

std::string ChipId::str() const { return to_hex(m_bytes.data(), m_bytes.size()); }

std::uint16_t Cplc::ic_fabricator() const noexcept {
  return static_cast<std::uint16_t>((raw[kFabricatorAt] << 8) | raw[kFabricatorAt + 1]);
}

std::uint16_t Cplc::ic_type() const noexcept {
  return static_cast<std::uint16_t>((raw[kTypeAt] << 8) | raw[kTypeAt + 1]);
}

std::uint32_t Cplc::ic_serial() const noexcept {
  return (std::uint32_t{raw[kSerialAt]} << 24) | (std::uint32_t{raw[kSerialAt + 1]} << 16) |
         (std::uint32_t{raw[kSerialAt + 2]} << 8) | raw[kSerialAt + 3];
}

std::uint16_t Cplc::ic_batch() const noexcept {
  return static_cast<std::uint16_t>((raw[kBatchAt] << 8) | raw[kBatchAt + 1]);
}

ChipId Cplc::chip_id() const {
  const std::uint8_t b[kChipIdSize] = {raw[kFabricatorAt], raw[kFabricatorAt + 1], raw[kTypeAt], raw[kTypeAt + 1],
                                       raw[kSerialAt],     raw[kSerialAt + 1],     raw[kSerialAt + 2],
                                       raw[kSerialAt + 3], raw[kBatchAt],          raw[kBatchAt + 1]};
  return ChipId::from_bytes(b, kChipIdSize);
}

Cplc Cplc::make(std::uint16_t fabricator, std::uint16_t type, std::uint32_t serial, std::uint16_t batch) {
  Cplc c;
  c.raw[kFabricatorAt] = static_cast<std::uint8_t>(fabricator >> 8);
  c.raw[kFabricatorAt + 1] = static_cast<std::uint8_t>(fabricator);
  c.raw[kTypeAt] = static_cast<std::uint8_t>(type >> 8);
  c.raw[kTypeAt + 1] = static_cast<std::uint8_t>(type);
  c.raw[kSerialAt] = static_cast<std::uint8_t>(serial >> 24);
  c.raw[kSerialAt + 1] = static_cast<std::uint8_t>(serial >> 16);
  c.raw[kSerialAt + 2] = static_cast<std::uint8_t>(serial >> 8);
  c.raw[kSerialAt + 3] = static_cast<std::uint8_t>(serial);
  c.raw[kBatchAt] = static_cast<std::uint8_t>(batch >> 8);
  c.raw[kBatchAt + 1] = static_cast<std::uint8_t>(batch);
  return c;
}

Cplc Cplc::parse(const std::uint8_t* data, std::size_t len) {
  const std::uint8_t* value = nullptr;
  if (len == kCplcSize) {
    value = data;
  } else if (len == kCplcSize + 3) {
    if (data[0] != kTag[0] || data[1] != kTag[1] || data[2] != kCplcSize)
      throw FormatError(ErrorCode::BadCplc, "CPLC must be tagged 9F7F 2A");
    value = data + 3;
  } else {
    throw FormatError(ErrorCode::BadCplc,
                      "CPLC must be 42 bytes (or 45 with its 9F7F tag), got " + std::to_string(len));
  }
  Cplc c;
  for (std::size_t i = 0; i < kCplcSize; ++i) c.raw[i] = value[i];
  return c;
}

Bytes Cplc::encode_tagged() const {
  // Sized up front: GCC 12 at -O2 warns (-Warray-bounds, a false positive) on insert() after a
  // 3-byte initializer list.
  Bytes out(3 + kCplcSize);
  out[0] = kTag[0];
  out[1] = kTag[1];
  out[2] = static_cast<std::uint8_t>(kCplcSize);
  std::copy(raw.begin(), raw.end(), out.begin() + 3);
  return out;
}

}  // namespace keyline::core
