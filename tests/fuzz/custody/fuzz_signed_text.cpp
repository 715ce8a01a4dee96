// Mirror requests and manifests from untrusted bytes (keyline::station::parse_signed_text): whatever
// parses has a signed part that is a prefix of the input ending at a line, and fields the format allows.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "keyline/core/error.h"
#include "keyline/station/custody.h"

namespace {

bool allowed(const std::string& name, const std::string& value) {
  if (name.empty() || name.size() > 32) return false;
  for (const char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  for (const char c : value)
    if (c < 0x20 || c > 0x7E) return false;
  return true;
}

void check(const std::string& text, const char* magic) {
  try {
    const auto t = keyline::station::parse_signed_text(text, magic);
    if (text.compare(0, t.signed_part.size(), t.signed_part) != 0 || t.signed_part.back() != '\n') std::abort();
    for (const auto* part : {&t.fields, &t.trailer})
      for (const auto& [name, value] : *part)
        if (!allowed(name, value)) std::abort();
  } catch (const keyline::core::FormatError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  check(text, "keyline-mirror-v1");
  check(text, "keyline-mirror-request-v1");
  return 0;
}
