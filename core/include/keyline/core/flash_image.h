// Flash image (docs/design.md section 5): what the device keeps and what recovery writes.
//   "KLFL" || version (1) || u32 backup length || backup package || u16 certificate count ||
//   { u32 length || DER }*   (identity certificate first, then its issuers up to, not including, the root)
// All integers big-endian. The image holds no key in clear: the device opens the backup at boot.
#pragma once

#include <cstdint>
#include <vector>

#include "keyline/core/bytes.h"

namespace keyline::core {

constexpr std::uint8_t kFlashVersion = 1;
constexpr std::size_t kFlashMaxSize = 1u << 20;  // 1 MiB: larger images are refused before parsing

struct FlashImage {
  Bytes backup;
  std::vector<Bytes> certificates;  // DER

  Bytes encode() const;
  // Strict: at most kFlashMaxSize bytes, magic, version, non-empty backup, non-empty certificates,
  // lengths within the input, no trailing bytes (so decode(b).encode() == b). The backup package
  // inside is not opened or parsed here: open_backup does that. Throws FormatError(BadFlashImage).
  // encode() throws FormatError(BadFlashImage) for an image decode would refuse (empty backup, too large).
  static FlashImage decode(const std::uint8_t* data, std::size_t len);
  static FlashImage decode(const Bytes& b) { return decode(b.data(), b.size()); }
};

}  // namespace keyline::core
