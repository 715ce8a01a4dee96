#include "keyline/core/dgi.h"

#include <string>

#include "keyline/core/error.h"

namespace keyline::core {

namespace {
// EMV CPS v1.1 section 4.3: one length byte for 0..254; 0xFF introduces a 2-byte length.
constexpr std::uint8_t kLongLength = 0xFF;
constexpr std::size_t kShortLengthMax = 254;

std::string tag_hex(std::uint16_t tag) {
  const std::uint8_t b[2] = {static_cast<std::uint8_t>(tag >> 8), static_cast<std::uint8_t>(tag)};
  return to_hex(b, 2);
}
}  // namespace

void encode_dgi(SecureBytes& out, std::uint16_t tag, const std::uint8_t* value, std::size_t len) {
  if (len > kDgiMaxValue)
    throw FormatError(ErrorCode::BadDgi, "DGI value of " + std::to_string(len) + " bytes exceeds 65535");
  out.push_back(static_cast<std::uint8_t>(tag >> 8));
  out.push_back(static_cast<std::uint8_t>(tag));
  if (len <= kShortLengthMax) {
    out.push_back(static_cast<std::uint8_t>(len));
  } else {
    out.push_back(kLongLength);
    out.push_back(static_cast<std::uint8_t>(len >> 8));
    out.push_back(static_cast<std::uint8_t>(len));
  }
  if (len > 0) out.insert(out.end(), value, value + len);
}

SecureBytes encode_dgis(const std::vector<Dgi>& dgis) {
  SecureBytes out;
  for (const auto& d : dgis) encode_dgi(out, d.tag, d.value.data(), d.value.size());
  return out;
}

std::vector<Dgi> decode_dgis(const std::uint8_t* data, std::size_t len) {
  std::vector<Dgi> out;
  std::size_t pos = 0;
  while (pos < len) {
    const std::size_t left = len - pos;
    if (left < 3) throw FormatError(ErrorCode::BadDgi, "truncated DGI header at offset " + std::to_string(pos));
    const auto tag = static_cast<std::uint16_t>((data[pos] << 8) | data[pos + 1]);
    std::size_t vlen = data[pos + 2];
    std::size_t header = 3;
    if (vlen == kLongLength) {
      if (left < 5) throw FormatError(ErrorCode::BadDgi, "truncated DGI long length at offset " + std::to_string(pos));
      vlen = (std::size_t{data[pos + 3]} << 8) | data[pos + 4];
      header = 5;
      // CPS uses the 3-byte form only for 255 bytes and more; accepting a long form for a short
      // value would give one DGI sequence two encodings (and package hashes two values).
      if (vlen <= kShortLengthMax)
        throw FormatError(ErrorCode::BadDgi, "DGI " + tag_hex(tag) + " uses the long length form for a short value");
    }
    if (vlen > left - header)
      throw FormatError(ErrorCode::BadDgi, "DGI " + tag_hex(tag) + " announces " + std::to_string(vlen) +
                                               " bytes, " + std::to_string(left - header) + " present");
    Dgi d;
    d.tag = tag;
    d.value.assign(data + pos + header, data + pos + header + vlen);
    out.push_back(std::move(d));
    pos += header + vlen;
  }
  return out;
}

const Dgi* find_dgi(const std::vector<Dgi>& dgis, std::uint16_t tag) {
  for (const auto& d : dgis)
    if (d.tag == tag) return &d;
  return nullptr;
}

}  // namespace keyline::core
