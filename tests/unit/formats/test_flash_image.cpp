// Flash image: round trip, strict decoding (every truncation, trailing bytes, caps).
#include <doctest/doctest.h>

#include <string>

#include "keyline/core/error.h"
#include "keyline/core/flash_image.h"

using namespace keyline::core;

namespace {

FlashImage sample() {
  FlashImage img;
  img.backup = Bytes(60, 0xAB);
  img.certificates = {Bytes(300, 0x30), Bytes(5, 0x31)};
  return img;
}

bool refused(const Bytes& b) {
  try {
    FlashImage::decode(b);
  } catch (const FormatError& e) {
    return e.code() == ErrorCode::BadFlashImage;
  }
  return false;
}

}  // namespace

TEST_CASE("flash image: round trip and layout") {
  const FlashImage img = sample();
  const Bytes enc = img.encode();
  CHECK(std::string(enc.begin(), enc.begin() + 4) == "KLFL");
  CHECK(enc[4] == kFlashVersion);
  CHECK(enc.size() == 4 + 1 + 4 + 60 + 2 + (4 + 300) + (4 + 5));
  const FlashImage back = FlashImage::decode(enc);
  CHECK(back.backup == img.backup);
  CHECK(back.certificates == img.certificates);
  CHECK(back.encode() == enc);

  FlashImage none;
  none.backup = Bytes{1};
  CHECK(FlashImage::decode(none.encode()).certificates.empty());
}

TEST_CASE("flash image: every truncation and any trailing byte is refused") {
  const Bytes enc = sample().encode();
  for (std::size_t n = 0; n < enc.size(); ++n) {
    CAPTURE(n);
    CHECK(refused(Bytes(enc.begin(), enc.begin() + static_cast<std::ptrdiff_t>(n))));
  }
  Bytes longer = enc;
  longer.push_back(0);
  CHECK(refused(longer));
}

TEST_CASE("flash image: bad magic, version, lengths and sizes") {
  const Bytes enc = sample().encode();
  Bytes b = enc;
  b[3] = 'X';
  CHECK(refused(b));
  b = enc;
  b[4] = 9;
  CHECK(refused(b));
  b = enc;
  b[5] = 0xFF;  // backup length far beyond the input
  CHECK(refused(b));
  b = enc;
  b[4 + 1 + 4 + 60] = 0xFF;  // certificate count beyond what the input can hold
  CHECK(refused(b));
  // Zero backup length and zero certificate length are refused.
  Bytes zero = {'K', 'L', 'F', 'L', 1, 0, 0, 0, 0, 0, 0};
  CHECK(refused(zero));
  Bytes zero_cert = {'K', 'L', 'F', 'L', 1, 0, 0, 0, 1, 0xAA, 0, 1, 0, 0, 0, 0};
  CHECK(refused(zero_cert));
  CHECK_THROWS_AS(FlashImage::decode(nullptr, 0), FormatError);

  // Over the 1 MiB cap: refused before parsing, and never produced by encode.
  Bytes huge(kFlashMaxSize + 1, 0);
  CHECK(refused(huge));
  FlashImage big;
  big.backup = Bytes(kFlashMaxSize, 1);
  CHECK_THROWS_AS(big.encode(), FormatError);
  FlashImage empty;
  CHECK_THROWS_AS(empty.encode(), FormatError);
}
