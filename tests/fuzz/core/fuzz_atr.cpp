// ATRs as a card or a hostile reader driver hands them over (core::parse_atr, ISO 7816-3 section
// 8.2). Whatever parses must be consistent: historical bytes within the ATR, T=0 when no TD1 names
// a protocol, and a parse of the same bytes the same.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/atr.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  const auto info = parse_atr(data, size);
  if (!info) return 0;
  if (size > 33 || info->historical.size() > 15 || info->historical.size() + 2 > size) std::abort();
  if (!info->t0 && !info->t1 && info->first_protocol == 0) std::abort();
  if (info->extended_length.has_value() != info->command_chaining.has_value()) std::abort();
  const auto again = parse_atr(data, size);
  if (!again || again->historical != info->historical || again->extended_length != info->extended_length) std::abort();
  return 0;
}
