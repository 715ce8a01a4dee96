// The vpcd stream decoder fed the same bytes in random pieces must give the same frames (or the
// same error) as when fed at once. The first input byte seeds the split points, the second picks
// a small maximum payload so that the limit is reached too.
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <vector>

#include "keyline/core/error.h"
#include "keyline/core/vpcd.h"

namespace {

using keyline::core::SecureBytes;

struct Outcome {
  std::vector<SecureBytes> frames;
  int error = 0;
  std::size_t left = 0;
};

Outcome run(const std::uint8_t* data, std::size_t size, std::size_t max, std::uint32_t seed) {
  keyline::core::FrameDecoder dec(max);
  Outcome o;
  std::size_t pos = 0;
  try {
    while (pos < size) {
      std::size_t n = size - pos;
      if (seed != 0) {
        seed = seed * 1103515245u + 12345u;  // any cheap deterministic sequence will do
        n = std::min<std::size_t>(n, (seed >> 16) % 9);
      }
      dec.feed(data + pos, n);
      pos += n;
      while (auto f = dec.next()) {
        if (f->empty() || f->size() > max) std::abort();
        o.frames.push_back(std::move(*f));
      }
    }
  } catch (const keyline::core::Error& e) {
    o.error = e.numeric();
    // Once broken it stays broken.
    try {
      (void)dec.next();
      std::abort();
    } catch (const keyline::core::Error& again) {
      if (again.numeric() != o.error) std::abort();
    }
  }
  o.left = dec.buffered();
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::uint32_t seed = data[0] | 1u;
  const std::size_t max = data[1] < 0x80 ? keyline::core::vpcd::max_payload : std::size_t{data[1]} - 0x7F;
  data += 2;
  size -= 2;
  const Outcome whole = run(data, size, max, 0);
  const Outcome split = run(data, size, max, seed);
  if (whole.error != split.error || whole.frames != split.frames) std::abort();
  if (whole.error == 0 && whole.left != split.left) std::abort();
  for (const auto& f : whole.frames) {
    const SecureBytes enc = keyline::core::encode_frame(f);
    if (enc.size() != f.size() + 2) std::abort();
  }
  return 0;
}
