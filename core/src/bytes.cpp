#include "keyline/core/bytes.h"

#include <array>

#include "keyline/core/error.h"

namespace keyline::core {

namespace {

constexpr char kHexDigits[] = "0123456789ABCDEF";
constexpr char kBase64Alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// Reverse table for the RFC 4648 section 4 alphabet; -1 marks bytes outside it.
constexpr std::array<int, 256> make_base64_table() {
  std::array<int, 256> t{};
  for (auto& v : t) v = -1;
  for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(kBase64Alphabet[i])] = i;
  return t;
}
constexpr std::array<int, 256> kBase64Table = make_base64_table();

}  // namespace

std::string to_hex(const std::uint8_t* data, std::size_t len) {
  std::string out;
  out.reserve(len * 2);
  for (std::size_t i = 0; i < len; ++i) {
    out.push_back(kHexDigits[data[i] >> 4]);
    out.push_back(kHexDigits[data[i] & 0x0F]);
  }
  return out;
}

Bytes from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) throw FormatError(ErrorCode::BadHex, "hex string has odd length");
  Bytes out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = hex_value(hex[i]);
    const int lo = hex_value(hex[i + 1]);
    if (hi < 0 || lo < 0)
      throw FormatError(ErrorCode::BadHex, "non-hex digit at offset " + std::to_string(hi < 0 ? i : i + 1));
    out.push_back(static_cast<std::uint8_t>((hi << 4) | lo));
  }
  return out;
}

std::string to_base64(const std::uint8_t* data, std::size_t len) {
  std::string out;
  out.reserve((len + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= len; i += 3) {
    const std::uint32_t v = (std::uint32_t{data[i]} << 16) | (std::uint32_t{data[i + 1]} << 8) | data[i + 2];
    out.push_back(kBase64Alphabet[(v >> 18) & 0x3F]);
    out.push_back(kBase64Alphabet[(v >> 12) & 0x3F]);
    out.push_back(kBase64Alphabet[(v >> 6) & 0x3F]);
    out.push_back(kBase64Alphabet[v & 0x3F]);
  }
  const std::size_t rest = len - i;
  if (rest == 1) {
    const std::uint32_t v = std::uint32_t{data[i]} << 16;
    out.push_back(kBase64Alphabet[(v >> 18) & 0x3F]);
    out.push_back(kBase64Alphabet[(v >> 12) & 0x3F]);
    out += "==";
  } else if (rest == 2) {
    const std::uint32_t v = (std::uint32_t{data[i]} << 16) | (std::uint32_t{data[i + 1]} << 8);
    out.push_back(kBase64Alphabet[(v >> 18) & 0x3F]);
    out.push_back(kBase64Alphabet[(v >> 12) & 0x3F]);
    out.push_back(kBase64Alphabet[(v >> 6) & 0x3F]);
    out.push_back('=');
  }
  return out;
}

Bytes from_base64(std::string_view text) {
  // RFC 4648 section 4 with padding; section 3.3 lets a decoder reject characters outside the
  // alphabet and section 3.5 non-zero pad bits ("canonical encoding"). We do both, so that one
  // value has exactly one accepted text (records are hashed and compared as text elsewhere).
  if (text.size() % 4 != 0) throw FormatError(ErrorCode::BadBase64, "base64 length is not a multiple of 4");
  Bytes out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text[i + static_cast<std::size_t>(k)];
      if (c == '=') {
        // Padding only in the last quantum, only in the last two places, and nothing after it.
        if (!last || k < 2) throw FormatError(ErrorCode::BadBase64, "misplaced base64 padding");
        ++pad;
        v[k] = 0;
        continue;
      }
      if (pad > 0) throw FormatError(ErrorCode::BadBase64, "data after base64 padding");
      v[k] = kBase64Table[static_cast<unsigned char>(c)];
      if (v[k] < 0) throw FormatError(ErrorCode::BadBase64, "character outside the base64 alphabet");
    }
    const std::uint32_t q = (std::uint32_t(v[0]) << 18) | (std::uint32_t(v[1]) << 12) |
                            (std::uint32_t(v[2]) << 6) | std::uint32_t(v[3]);
    if ((pad == 1 && (q & 0xFF) != 0) || (pad == 2 && (q & 0xFFFF) != 0))
      throw FormatError(ErrorCode::BadBase64, "non-zero base64 pad bits");
    out.push_back(static_cast<std::uint8_t>(q >> 16));
    if (pad < 2) out.push_back(static_cast<std::uint8_t>(q >> 8));
    if (pad < 1) out.push_back(static_cast<std::uint8_t>(q));
  }
  return out;
}

void put_u16(Bytes& out, std::uint16_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

void put_u32(Bytes& out, std::uint32_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 24));
  out.push_back(static_cast<std::uint8_t>(v >> 16));
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

}  // namespace keyline::core
