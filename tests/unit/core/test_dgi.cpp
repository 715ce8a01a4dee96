#include <doctest/doctest.h>

#include "keyline/core/dgi.h"
#include "vector_file.h"

using namespace keyline::core;

namespace {

SecureBytes sb(const std::string& hex) {
  const Bytes b = from_hex(hex);
  return SecureBytes(b.begin(), b.end());
}
std::string hx(const SecureBytes& b) { return to_hex(b.data(), b.size()); }

Dgi dgi(std::uint16_t tag, std::size_t len, std::uint8_t fill) {
  Dgi d;
  d.tag = tag;
  d.value.assign(len, fill);
  return d;
}

}  // namespace

TEST_CASE("DGI encoding: length forms at the 254/255 boundary (EMV CPS 4.3)") {
  SecureBytes out;
  encode_dgi(out, 0x0101, nullptr, 0);
  CHECK(hx(out) == "010100");

  out.clear();
  const std::uint8_t v[2] = {0xAB, 0xCD};
  encode_dgi(out, 0x8101, v, 2);
  CHECK(hx(out) == "810102ABCD");

  const SecureBytes e254 = encode_dgis({dgi(0x0201, 254, 0x11)});
  CHECK(e254.size() == 3 + 254);
  CHECK(hx(SecureBytes(e254.begin(), e254.begin() + 3)) == "0201FE");

  const SecureBytes e255 = encode_dgis({dgi(0x0201, 255, 0x22)});
  CHECK(e255.size() == 5 + 255);
  CHECK(hx(SecureBytes(e255.begin(), e255.begin() + 5)) == "0201FF00FF");

  const SecureBytes emax = encode_dgis({dgi(0x0203, kDgiMaxValue, 0x33)});
  CHECK(emax.size() == 5 + 65535);
  CHECK(hx(SecureBytes(emax.begin(), emax.begin() + 5)) == "0203FFFFFF");
}

TEST_CASE("DGI: values over 65535 bytes are refused on encode") {
  SecureBytes out;
  const SecureBytes big(kDgiMaxValue + 1, 0);
  CHECK_THROWS_CODE(encode_dgi(out, 0x0201, big.data(), big.size()), BadDgi);
  CHECK(out.empty());
  CHECK_THROWS_CODE(encode_dgis({dgi(0x0101, 1, 0), dgi(0x0201, kDgiMaxValue + 1, 0)}), BadDgi);
}

TEST_CASE("DGI: sequence round trip and find_dgi") {
  const std::vector<Dgi> in = {dgi(0x0101, 10, 1), dgi(0x0201, 300, 2), dgi(0x8101, 0, 3), dgi(0x0F01, 254, 4),
                               dgi(0x0F01, 1, 5)};
  const SecureBytes enc = encode_dgis(in);
  const auto out = decode_dgis(enc);
  REQUIRE(out.size() == in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    CHECK(out[i].tag == in[i].tag);
    CHECK(out[i].value == in[i].value);
  }
  CHECK(encode_dgis(out) == enc);
  REQUIRE(find_dgi(out, 0x0F01) != nullptr);
  CHECK(find_dgi(out, 0x0F01)->value.size() == 254);  // the first one
  CHECK(find_dgi(out, 0x9103) == nullptr);
  CHECK(decode_dgis(nullptr, 0).empty());
}

TEST_CASE("DGI: truncated, lying, trailing and non-canonical input is BadDgi") {
  // A vector with a correct prefix and the data cut short must never read past the end; the
  // sanitizer build makes any over-read a crash.
  const SecureBytes good = encode_dgis({dgi(0x0101, 3, 0xAA), dgi(0x0201, 300, 0xBB)});
  for (std::size_t cut = 1; cut < good.size(); ++cut) {
    if (cut == 6) continue;  // exactly the first DGI: a valid sequence
    const SecureBytes part(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut));
    INFO("cut at " << cut);
    CHECK_THROWS_CODE(decode_dgis(part.data(), part.size()), BadDgi);
  }
  CHECK(decode_dgis(SecureBytes(good.begin(), good.begin() + 6)).size() == 1);

  CHECK_THROWS_CODE(decode_dgis(sb("01")), BadDgi);              // half a tag
  CHECK_THROWS_CODE(decode_dgis(sb("0101")), BadDgi);            // no length
  CHECK_THROWS_CODE(decode_dgis(sb("010105AABB")), BadDgi);      // length 5, 2 present
  CHECK_THROWS_CODE(decode_dgis(sb("0101FF")), BadDgi);          // FF with no length bytes
  CHECK_THROWS_CODE(decode_dgis(sb("0101FF01")), BadDgi);        // FF with one length byte
  CHECK_THROWS_CODE(decode_dgis(sb("0101FFFFFF00")), BadDgi);    // 65535 announced, 1 present
  CHECK_THROWS_CODE(decode_dgis(sb("0101FF0002AABB")), BadDgi);  // long form for a short value
  CHECK_THROWS_CODE(decode_dgis(sb("010101AA00")), BadDgi);      // trailing byte
  CHECK_THROWS_CODE(decode_dgis(sb("010101AA0102")), BadDgi);    // trailing partial header
}
