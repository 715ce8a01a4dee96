#include <doctest/doctest.h>

#include <random>

#include "keyline/core/vpcd.h"
#include "vector_file.h"

using namespace keyline::core;

namespace {

SecureBytes pattern(std::size_t n, std::uint8_t seed) {
  SecureBytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>(i * 13 + seed);
  return b;
}

}  // namespace

TEST_CASE("encode_frame: 2-byte big-endian length prefix") {
  const std::uint8_t ctl = vpcd::get_atr;
  const SecureBytes f = encode_frame(&ctl, 1);
  CHECK(to_hex(f.data(), f.size()) == "000104");
  const SecureBytes big = encode_frame(pattern(vpcd::max_payload, 1));
  CHECK(big.size() == 2 + 65535);
  CHECK(big[0] == 0xFF);
  CHECK(big[1] == 0xFF);
  const SecureBytes too_big = pattern(vpcd::max_payload + 1, 0);
  CHECK_THROWS_CODE(encode_frame(too_big), FrameTooLarge);
  CHECK_THROWS_CODE(encode_frame(SecureBytes{}), BadFrame);
}

TEST_CASE("FrameDecoder: byte-at-a-time and random split points give the same frames") {
  std::vector<SecureBytes> payloads = {SecureBytes{vpcd::power_on}, pattern(5, 2), pattern(300, 3),
                                       SecureBytes{vpcd::reset}, pattern(65535, 4), pattern(2, 5)};
  SecureBytes stream;
  for (const auto& p : payloads) {
    const SecureBytes f = encode_frame(p);
    stream.insert(stream.end(), f.begin(), f.end());
  }

  std::mt19937 rng(7);
  for (int round = 0; round < 20; ++round) {
    FrameDecoder dec;
    std::vector<SecureBytes> got;
    std::size_t pos = 0;
    while (pos < stream.size()) {
      // round 0 feeds one byte at a time; later rounds cut at random places.
      const std::size_t n = round == 0 ? 1 : std::min<std::size_t>(stream.size() - pos, rng() % 70000);
      dec.feed(stream.data() + pos, n);
      pos += n;
      while (auto p = dec.next()) got.push_back(std::move(*p));
    }
    CHECK(got == payloads);
    CHECK(dec.buffered() == 0);
    CHECK_FALSE(dec.next().has_value());
  }
}

TEST_CASE("FrameDecoder: incomplete frames wait, bad lengths are typed errors") {
  FrameDecoder dec;
  CHECK_FALSE(dec.next().has_value());
  const std::uint8_t half[] = {0x00};
  dec.feed(half, 1);
  CHECK_FALSE(dec.next().has_value());
  const std::uint8_t rest[] = {0x03, 0xAA, 0xBB};
  dec.feed(rest, 3);
  CHECK_FALSE(dec.next().has_value());
  CHECK(dec.buffered() == 4);
  const std::uint8_t last[] = {0xCC};
  dec.feed(last, 1);
  const auto p = dec.next();
  REQUIRE(p.has_value());
  CHECK(to_hex(p->data(), p->size()) == "AABBCC");

  FrameDecoder zero;
  const std::uint8_t z[] = {0x00, 0x00, 0x01};
  zero.feed(z, 3);
  CHECK_THROWS_CODE(zero.next(), BadFrame);
  CHECK_THROWS_CODE(zero.next(), BadFrame);  // stays broken: the stream has lost its framing

  FrameDecoder small(16);
  const std::uint8_t over[] = {0x00, 0x11};  // 17 announced, limit 16, payload not even sent
  small.feed(over, 2);
  CHECK_THROWS_CODE(small.next(), FrameTooLarge);

  FrameDecoder exact(16);
  const SecureBytes f16 = encode_frame(pattern(16, 9));
  exact.feed(f16.data(), f16.size());
  CHECK(exact.next()->size() == 16);

  exact.feed(nullptr, 0);  // an empty read is harmless
  CHECK(exact.buffered() == 0);
}
