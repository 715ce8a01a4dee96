// Data Grouping Identifiers as in EMV Card Personalization Specification (CPS) v1.1 section 4.3:
// tag (2 bytes) || length (1 byte for 0..254, else 0xFF followed by 2 bytes) || value.
// The decoder never reads past the input and refuses trailing garbage.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "keyline/core/bytes.h"

namespace keyline::core {

struct Dgi {
  std::uint16_t tag = 0;
  SecureBytes value;  // may hold private keys (DGIs 8xxx), so it is zeroed on free
};

constexpr std::size_t kDgiMaxValue = 0xFFFF;

// Appends one DGI. Throws FormatError(BadDgi) when value is longer than 65535 bytes.
void encode_dgi(SecureBytes& out, std::uint16_t tag, const std::uint8_t* value, std::size_t len);
SecureBytes encode_dgis(const std::vector<Dgi>& dgis);
// Parses a whole sequence. Throws FormatError(BadDgi) on truncation, over-long length, trailing bytes.
std::vector<Dgi> decode_dgis(const std::uint8_t* data, std::size_t len);
inline std::vector<Dgi> decode_dgis(const SecureBytes& b) { return decode_dgis(b.data(), b.size()); }

// First DGI with this tag, if any.
const Dgi* find_dgi(const std::vector<Dgi>& dgis, std::uint16_t tag);

}  // namespace keyline::core
