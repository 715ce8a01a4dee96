// The Answer-To-Reset of a card (ISO/IEC 7816-3:2006 section 8): which transmission protocols it
// offers and, from its historical bytes (ISO/IEC 7816-4:2020 section 8.1.1), whether it takes
// extended-length APDUs. An ATR comes from the card through the reader: untrusted bytes, parsed
// without ever reading past them (tests/fuzz/core/fuzz_atr.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "keyline/core/bytes.h"

namespace keyline::core {

struct AtrInfo {
  bool t0 = false;  // T=0 offered (also when no TD1 is present: section 8.2.3, "T=0 by default")
  bool t1 = false;  // T=1 offered by some TDi
  int first_protocol = 0;  // the protocol of TD1 (0 without TD1): the card's default
  bool checksum_ok = true;  // TCK present where section 8.2.5 needs it and the XOR of T0..TCK is 0
  Bytes historical;
  // From the card capabilities (COMPACT-TLV tag 7, ISO 7816-4 section 8.1.1.2.7), when the card
  // says it: third software function table b8 = command chaining, b7 = extended Lc and Le fields.
  std::optional<bool> command_chaining;
  std::optional<bool> extended_length;
};

// Parses an ATR of at most 33 bytes (section 8.2.1: TS and at most 32 more). Returns nullopt when
// the bytes are not an ATR: TS neither 3B nor 3F, interface or historical bytes cut short, bytes
// after TCK. Historical bytes that are not COMPACT-TLV (category 00 / 80) only leave the
// capabilities unknown.
std::optional<AtrInfo> parse_atr(const std::uint8_t* atr, std::size_t len);
inline std::optional<AtrInfo> parse_atr(const Bytes& atr) { return parse_atr(atr.data(), atr.size()); }

}  // namespace keyline::core
