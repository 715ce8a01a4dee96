// IMEIs and the other text codecs (hex, base64) from untrusted text: parse and is_valid agree,
// what parses rebuilds from its TAC and serial, and hex/base64 round-trip.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "keyline/core/bytes.h"
#include "keyline/core/error.h"
#include "keyline/core/imei.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool valid = Imei::is_valid(text);
  try {
    const Imei i = Imei::parse(text);
    if (!valid || i.str() != text) std::abort();
    if (Imei::from_tac_serial(i.tac(), i.serial()) != i) std::abort();
  } catch (const Error&) {
    if (valid) std::abort();
  }
  try {
    if (size >= 14) (void)Imei::check_digit(text.substr(0, 14));
  } catch (const Error&) {
  }
  try {
    const Bytes b = from_hex(text);
    if (from_hex(to_hex(b)) != b) std::abort();
  } catch (const Error&) {
  }
  try {
    const Bytes b = from_base64(text);
    if (to_base64(b) != text) std::abort();  // strict decoding: one text per value
  } catch (const Error&) {
  }
  return 0;
}
