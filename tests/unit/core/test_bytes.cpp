#include <doctest/doctest.h>

#include <string>

#include "keyline/core/bytes.h"
#include "vector_file.h"

using namespace keyline::core;

namespace {

// Parses one RFC 4648 section 10 line: NAME("input") = "output".
bool parse_rfc_line(const std::string& line, std::string& name, std::string& input, std::string& output) {
  const auto open = line.find("(\"");
  const auto close = line.find("\")");
  const auto eq = line.find("= \"");
  if (open == std::string::npos || close == std::string::npos || eq == std::string::npos) return false;
  name = line.substr(0, open);
  input = line.substr(open + 2, close - open - 2);
  output = line.substr(eq + 3, line.size() - eq - 4);
  return line.back() == '"';
}

Bytes bytes_of(const std::string& s) { return Bytes(s.begin(), s.end()); }

}  // namespace

TEST_CASE("RFC 4648 section 10 vectors: base64 and base16 both ways") {
  const auto vf = keyline::test::read_vectors("base64_rfc4648.txt");
  CHECK(vf.source.find("RFC 4648") != std::string::npos);
  int b64 = 0, b16 = 0;
  for (const auto& line : vf.lines) {
    std::string name, input, output;
    REQUIRE_MESSAGE(parse_rfc_line(line, name, input, output), line);
    INFO(line);
    if (name == "BASE64") {
      CHECK(to_base64(bytes_of(input)) == output);
      CHECK(from_base64(output) == bytes_of(input));
      ++b64;
    } else if (name == "BASE16") {
      CHECK(to_hex(bytes_of(input)) == output);
      CHECK(from_hex(output) == bytes_of(input));
      std::string lower = output;
      for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      CHECK(from_hex(lower) == bytes_of(input));
      ++b16;
    }
  }
  CHECK(b64 == 7);
  CHECK(b16 == 7);
}

TEST_CASE("hex: all byte values round-trip, output is upper case") {
  Bytes all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<std::uint8_t>(i));
  const std::string h = to_hex(all);
  CHECK(h.size() == 512);
  CHECK(h.substr(0, 8) == "00010203");
  CHECK(h.substr(h.size() - 4) == "FEFF");
  CHECK(h.find_first_of("abcdef") == std::string::npos);
  CHECK(from_hex(h) == all);
  CHECK(from_hex("aBcD") == Bytes{0xAB, 0xCD});
}

TEST_CASE("hex: bad input is BadHex") {
  CHECK_THROWS_CODE(from_hex("ABC"), BadHex);
  CHECK_THROWS_CODE(from_hex("0G"), BadHex);
  CHECK_THROWS_CODE(from_hex("G0"), BadHex);
  CHECK_THROWS_CODE(from_hex("00 11"), BadHex);
  CHECK_THROWS_CODE(from_hex("0x00"), BadHex);
  CHECK_THROWS_CODE(from_hex(std::string("0\0", 2)), BadHex);
}

TEST_CASE("base64: all byte values round-trip for every length mod 3") {
  for (std::size_t n = 0; n < 70; ++n) {
    Bytes b;
    for (std::size_t i = 0; i < n; ++i) b.push_back(static_cast<std::uint8_t>(i * 37 + 250));
    const std::string t = to_base64(b);
    CHECK(t.size() % 4 == 0);
    CHECK(from_base64(t) == b);
  }
  const Bytes ff(3, 0xFF);
  CHECK(to_base64(ff) == "////");
  CHECK(to_base64(Bytes{0xFB, 0xEF}) == "++8=");
}

TEST_CASE("base64: strict decoding refuses what section 4 does not allow") {
  CHECK_THROWS_CODE(from_base64("Zg"), BadBase64);          // padding missing
  CHECK_THROWS_CODE(from_base64("Zg="), BadBase64);         // padding short
  CHECK_THROWS_CODE(from_base64("Zm9v\n"), BadBase64);      // whitespace
  CHECK_THROWS_CODE(from_base64("Zm 9v"), BadBase64);
  CHECK_THROWS_CODE(from_base64("Zm9v YmFy"), BadBase64);
  CHECK_THROWS_CODE(from_base64("Zm-_"), BadBase64);        // base64url alphabet (section 5)
  CHECK_THROWS_CODE(from_base64("Zg==Zg=="), BadBase64);    // padding in the middle
  CHECK_THROWS_CODE(from_base64("Z==="), BadBase64);        // three pad characters
  CHECK_THROWS_CODE(from_base64("===="), BadBase64);
  CHECK_THROWS_CODE(from_base64("Zg=a"), BadBase64);        // data after padding
  CHECK_THROWS_CODE(from_base64("Zh=="), BadBase64);        // non-zero pad bits (section 3.5)
  CHECK_THROWS_CODE(from_base64("Zm9="), BadBase64);
  CHECK_THROWS_CODE(from_base64(std::string("Zm9\0", 4)), BadBase64);
  CHECK_THROWS_CODE(from_base64("Zm9v\xC3\xA9=="), BadBase64);
}

TEST_CASE("put_u16 / put_u32 are big-endian and append") {
  Bytes b{0xAA};
  put_u16(b, 0x1234);
  put_u32(b, 0xDEADBEEF);
  CHECK(b == Bytes{0xAA, 0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF});
}
