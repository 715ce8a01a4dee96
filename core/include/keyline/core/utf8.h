// Strict UTF-8 (RFC 3629 section 4: no overlong forms, no surrogates, nothing above U+10FFFF) for
// the signed-note and checkpoint parsers, and the test of text an officer reads on a terminal
// (the ceremony's subjects and log).
#pragma once

#include <cstdint>
#include <string_view>

namespace keyline::core {

// Decodes the code point at s[i], advancing i; false for an invalid sequence.
inline bool utf8_next(std::string_view s, std::size_t& i, std::uint32_t& cp) {
  const auto b = [&](std::size_t k) { return static_cast<std::uint8_t>(s[k]); };
  const std::uint8_t c = b(i);
  std::size_t len;
  std::uint32_t min;
  if (c < 0x80) {
    cp = c;
    ++i;
    return true;
  } else if ((c & 0xE0) == 0xC0) {
    len = 2, min = 0x80, cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, min = 0x800, cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, min = 0x10000, cp = c & 0x07;
  } else {
    return false;
  }
  if (s.size() - i < len) return false;
  for (std::size_t k = 1; k < len; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return false;
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
  i += len;
  return true;
}

// True when s is valid UTF-8 and every code point passes ok.
template <typename Pred>
bool utf8_all(std::string_view s, Pred ok) {
  std::size_t i = 0;
  std::uint32_t cp = 0;
  while (i < s.size()) {
    if (!utf8_next(s, i, cp) || !ok(cp)) return false;
  }
  return true;
}

// Unicode White_Space (what Go's unicode.IsSpace answers, which golang.org/x/mod/sumdb/note uses
// for the signed-note rule "no Unicode spaces" in key names).
inline bool is_unicode_space(std::uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// A code point a terminal shows as itself: not a C0 or C1 control (ISO/IEC 6429: U+0000-001F,
// U+007F-009F; U+009B is an 8-bit CSI to terminals that honour C1) and not a bidirectional
// formatting character (Unicode UAX #9 section 2: U+200E/F, U+202A-202E, U+2066-2069), which
// reorders what the reader sees.
inline bool is_terminal_safe(std::uint32_t cp) {
  if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F)) return false;
  if (cp == 0x200E || cp == 0x200F || (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069)) return false;
  return true;
}

}  // namespace keyline::core
