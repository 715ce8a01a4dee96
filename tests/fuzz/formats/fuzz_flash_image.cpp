// Flash image from untrusted bytes. The format is canonical (fixed-width lengths, no trailing bytes),
// so whatever decodes must encode back to the same bytes.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/error.h"
#include "keyline/core/flash_image.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const FlashImage img = FlashImage::decode(data, size);
    if (img.encode() != Bytes(data, data + size)) std::abort();
  } catch (const FormatError&) {
  }
  return 0;
}
