#include "keyline/core/atr.h"

namespace keyline::core {

namespace {

constexpr std::size_t kMaxAtr = 33;

// ISO 7816-4 section 8.1.1.2: COMPACT-TLV data objects, one byte tag (high nibble) and length
// (low nibble). Tag 7 = card capabilities; the third byte is the third software function table.
void parse_compact_tlv(const std::uint8_t* p, std::size_t len, AtrInfo& info) {
  std::size_t i = 0;
  while (i < len) {
    const std::uint8_t tag = p[i] >> 4;
    const std::size_t n = p[i] & 0x0F;
    ++i;
    if (n > len - i) return;  // an object cut short: nothing after it can be trusted
    if (tag == 0x7 && n >= 3) {
      info.command_chaining = (p[i + 2] & 0x80) != 0;
      info.extended_length = (p[i + 2] & 0x40) != 0;
    }
    i += n;
  }
}

// Section 8.1.1: category indicator 00 = COMPACT-TLV objects then a 3-byte status indicator;
// 80 = COMPACT-TLV objects only; 10 and the proprietary ones say nothing we use.
void parse_historical(AtrInfo& info) {
  const Bytes& h = info.historical;
  if (h.empty()) return;
  if (h[0] == 0x80) parse_compact_tlv(h.data() + 1, h.size() - 1, info);
  if (h[0] == 0x00 && h.size() >= 4) parse_compact_tlv(h.data() + 1, h.size() - 4, info);
}

}  // namespace

std::optional<AtrInfo> parse_atr(const std::uint8_t* atr, std::size_t len) {
  // Section 8.1: TS 3B = direct convention, 3F = inverse (pcscd hands the bytes over decoded).
  if (len < 2 || len > kMaxAtr || (atr[0] != 0x3B && atr[0] != 0x3F)) return std::nullopt;
  AtrInfo info;
  std::size_t i = 1;
  const std::size_t k = atr[i] & 0x0F;
  std::uint8_t y = atr[i] >> 4;
  ++i;
  bool tck_needed = false;  // section 8.2.5: only T=0 indicated -> no TCK
  bool any_td = false;
  while (y) {
    // TAi, TBi, TCi are present as bits 5-7 of Yi say; only TDi is read (the protocol).
    for (std::uint8_t bit = 0x1; bit <= 0x4; bit <<= 1)
      if (y & bit) ++i;
    if (!(y & 0x8)) break;
    if (i >= len) return std::nullopt;
    const std::uint8_t td = atr[i++];
    const int t = td & 0x0F;
    if (!any_td) info.first_protocol = t;
    any_td = true;
    if (t == 0) info.t0 = true;
    if (t == 1) info.t1 = true;
    if (t != 0) tck_needed = true;
    y = td >> 4;
  }
  if (i > len || k > len - i) return std::nullopt;
  if (!any_td) info.t0 = true;
  info.historical.assign(atr + i, atr + i + k);
  i += k;
  if (tck_needed) {
    if (i + 1 != len) return std::nullopt;
    std::uint8_t x = 0;
    for (std::size_t j = 1; j < len; ++j) x ^= atr[j];
    info.checksum_ok = x == 0;
  } else if (i != len) {
    return std::nullopt;
  }
  parse_historical(info);
  return info;
}

}  // namespace keyline::core
