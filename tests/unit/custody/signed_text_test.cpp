// parse_signed_text (docs/custody.md "Files"): what is signed is exactly the bytes before the signature line,
// and each malformed file is refused with 4035 rather than read differently by two stations.
#include <doctest/doctest.h>

#include <string>

#include "keyline/station/custody.h"

using keyline::station::parse_signed_text;

namespace {

const std::string kMagic = "keyline-mirror-v1";

int code_of(const std::string& text) {
  try {
    parse_signed_text(text, kMagic);
  } catch (const keyline::core::Error& e) {
    return static_cast<int>(e.code());
  }
  return 0;
}

}  // namespace

TEST_CASE("the signed part ends before the signature line, the trailer is outside it") {
  const std::string body = kMagic + "\nid=ab\nversion=2\n";
  const auto t = parse_signed_text(body + "signature=AAEC\nwrapped=AwQ=\n", kMagic);
  CHECK(t.signed_part == body);
  CHECK(t.field("id") == "ab");
  CHECK(t.field("version") == "2");
  CHECK(t.signature == keyline::core::Bytes{0, 1, 2});
  CHECK(t.trailer.at("wrapped") == "AwQ=");
  CHECK(t.fields.count("wrapped") == 0);
  CHECK_THROWS_AS(t.field("label"), keyline::core::FormatError);
}

TEST_CASE("malformed files are refused with 4035") {
  const char* bad[] = {
      "keyline-mirror-v1\nid=1\n",                           // no signature
      "keyline-mirror-v1\nid=1\nid=2\nsignature=AAAA\n",     // a name twice (which one would count?)
      "keyline-mirror-v1\nid=1\nsignature=AAAA",             // no final newline
      "keyline-mirror-v2\nid=1\nsignature=AAAA\n",           // another magic
      "keyline-mirror-request-v1\nsignature=AAAA\n",         // a request where a manifest is expected
      "keyline-mirror-v1\nID=1\nsignature=AAAA\n",           // a name outside [a-z0-9_]
      "keyline-mirror-v1\nid=\x01\nsignature=AAAA\n",        // a control character
      "keyline-mirror-v1\nid=\xc3\xa9\nsignature=AAAA\n",    // not ASCII
      "keyline-mirror-v1\nnoequals\nsignature=AAAA\n",       // a line without '='
      "keyline-mirror-v1\nsignature=!!!!\n",                 // signature not base64
      "keyline-mirror-v1\nid=1\r\nsignature=AAAA\n",         // CR is not part of a value
      "keyline-mirror-v1\nsignature=AAAA\nwrapped=1\nwrapped=2\n",  // a trailer name twice
  };
  for (const char* text : bad) {
    CAPTURE(text);
    CHECK(code_of(text) == 4035);
  }
  CHECK(code_of(kMagic + "\n" + std::string(64 * 1024, 'x') + "\n") == 4035);  // over 64 KiB
}
