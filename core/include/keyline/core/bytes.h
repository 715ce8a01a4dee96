#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <botan/secmem.h>

namespace keyline::core {

using Bytes = std::vector<std::uint8_t>;
// Secrets (chip keys, private keys, PINs) live only in SecureBytes: zeroed on free.
using SecureBytes = Botan::secure_vector<std::uint8_t>;

// Upper-case hex out.
std::string to_hex(const std::uint8_t* data, std::size_t len);
inline std::string to_hex(const Bytes& b) { return to_hex(b.data(), b.size()); }
// Accepts upper and lower case, no separators. Throws FormatError(BadHex) on odd length or a
// non-hex digit.
Bytes from_hex(std::string_view hex);

// RFC 4648 section 4 base64 with padding. Decoding is strict: padding required, no whitespace or
// other characters outside the alphabet, pad bits zero (section 3.5). Throws FormatError(BadBase64).
std::string to_base64(const std::uint8_t* data, std::size_t len);
inline std::string to_base64(const Bytes& b) { return to_base64(b.data(), b.size()); }
Bytes from_base64(std::string_view text);

// Big-endian helpers for wire formats.
void put_u16(Bytes& out, std::uint16_t v);
void put_u32(Bytes& out, std::uint32_t v);

}  // namespace keyline::core
