// Card Production Life Cycle data (GlobalPlatform Card Specification v2.3, GET DATA tag 9F7F):
// 42 bytes. keyline's chip ID is IC Fabricator (offset 0, 2 bytes) || IC Type (2, 2) ||
// IC Serial Number (12, 4) || IC Batch Identifier (16, 2): 10 bytes, 20 upper-case hex digits.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "keyline/core/bytes.h"

namespace keyline::core {

constexpr std::size_t kCplcSize = 42;
constexpr std::size_t kChipIdSize = 10;

class ChipId {
 public:
  // Throws FormatError(BadChipId) unless exactly 20 hex digits (upper or lower case accepted,
  // always printed upper case).
  static ChipId parse(std::string_view hex);
  static ChipId from_bytes(const std::uint8_t* b, std::size_t len);
  static bool is_valid(std::string_view hex) noexcept;  // 20 upper-case hex digits exactly

  const std::array<std::uint8_t, kChipIdSize>& bytes() const noexcept { return m_bytes; }
  std::string str() const;
  bool operator==(const ChipId& o) const noexcept { return m_bytes == o.m_bytes; }
  bool operator!=(const ChipId& o) const noexcept { return m_bytes != o.m_bytes; }

 private:
  std::array<std::uint8_t, kChipIdSize> m_bytes{};
};

struct Cplc {
  std::array<std::uint8_t, kCplcSize> raw{};

  std::uint16_t ic_fabricator() const noexcept;
  std::uint16_t ic_type() const noexcept;
  std::uint32_t ic_serial() const noexcept;
  std::uint16_t ic_batch() const noexcept;
  ChipId chip_id() const;

  // Builds a CPLC with the four chip-ID fields set and the other fields zero.
  static Cplc make(std::uint16_t fabricator, std::uint16_t type, std::uint32_t serial, std::uint16_t batch);
  // Accepts the 42-byte value, or the value wrapped as 9F7F 2A <42 bytes> (as GET DATA returns it).
  // Throws FormatError(BadCplc).
  static Cplc parse(const std::uint8_t* data, std::size_t len);
  // 9F 7F 2A || raw: the GET DATA response body.
  Bytes encode_tagged() const;
};

}  // namespace keyline::core
