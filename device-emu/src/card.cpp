// The device as a card in a reader: its ATR and the T=0 rules (CardOptions, docs/readers.md).
#include "keyline/device/applet.h"

namespace keyline::device {

namespace {

core::ResponseApdu sw_only(std::uint16_t sw) {
  core::ResponseApdu r;
  r.sw = sw;
  return r;
}

// ISO 7816-4 section 8.1.1: category indicator 80, then COMPACT-TLV tag 7 (card capabilities) of
// three bytes; the third software function table says command chaining (b8) and no extended
// Lc/Le (b7 = 0).
constexpr std::uint8_t kNoExtendedHistorical[] = {0x80, 0x73, 0x00, 0x00, 0x80};

}  // namespace

core::Bytes card_atr(const CardOptions& card) {
  if (card.protocol == Protocol::t1 && card.extended) return core::Bytes(std::begin(kAtr), std::end(kAtr));
  core::Bytes hist;
  if (!card.extended) hist.assign(std::begin(kNoExtendedHistorical), std::end(kNoExtendedHistorical));
  const auto k = static_cast<std::uint8_t>(hist.size());
  // ISO 7816-3 section 8.2: TS 3B; T0 = Y1 (TD1 present or not) | K. T=0 only: no interface bytes
  // and no TCK (section 8.2.5). T=1: TD1 = T=0 with TD2 following, TD2 = T=1, then TCK.
  core::Bytes atr{0x3B};
  if (card.protocol == Protocol::t0) {
    atr.push_back(k);
    atr.insert(atr.end(), hist.begin(), hist.end());
    return atr;
  }
  atr.insert(atr.end(), {static_cast<std::uint8_t>(0x80 | k), 0x80, 0x01});
  atr.insert(atr.end(), hist.begin(), hist.end());
  std::uint8_t tck = 0;
  for (std::size_t i = 1; i < atr.size(); ++i) tck ^= atr[i];
  atr.push_back(tck);
  return atr;
}

core::ResponseApdu Session::process_t0(const core::CommandApdu& c) {
  // ISO 7816-3 section 12.2: a T=0 command TPDU carries P3 = Lc or Le, never both; a reader maps a
  // case 4 APDU to its case 3 TPDU. One that comes with both is not from a T=0 reader.
  if (c.le && !c.data.empty()) {
    m_t0_pending.reset();
    m_t0_pos = 0;
    return sw_only(core::sw::wrong_length);
  }
  if (c.ins == ins::get_response && (c.cla & ~0x10) == 0x00 && m_t0_pending) return t0_get_response(c);
  m_t0_pending.reset();
  m_t0_pos = 0;
  core::ResponseApdu r = process(c);
  if (r.data.empty()) return r;
  if (!c.le) {
    // ISO 7816-3 section 12.2.4 (case 4 over T=0): the data waits for GET RESPONSE; 61XX says how
    // much (00 = 256 or more).
    const std::size_t n = r.data.size();
    m_t0_pending = std::move(r);
    m_t0_pos = 0;
    return sw_only(static_cast<std::uint16_t>(core::sw::bytes_remaining_base | (n >= 256 ? 0 : n)));
  }
  // ISO 7816-4 section 5.6, ISO 7816-3 section 12.2.3: a case 2 command whose Le is not the length
  // available (up to 256) is answered 6CXX with the exact length; the reader sends it again.
  // Not to GET RESPONSE: its piece is taken from the chainer already and would be lost.
  const std::size_t ne = *c.le == 0 ? 256 : *c.le;
  if (r.data.size() < ne && c.ins != ins::get_response) return sw_only(static_cast<std::uint16_t>(0x6C00 | r.data.size()));
  return r;
}

// Each GET RESPONSE takes up to its Ne of what is left; 61XX announces the rest (ISO 7816-4 5.6).
core::ResponseApdu Session::t0_get_response(const core::CommandApdu& c) {
  core::ResponseApdu& pending = *m_t0_pending;
  const std::size_t ne = !c.le || *c.le == 0 ? 256 : *c.le;
  const std::size_t left = pending.data.size() - m_t0_pos;
  const std::size_t n = std::min(ne, left);
  core::ResponseApdu r;
  const auto from = pending.data.begin() + static_cast<std::ptrdiff_t>(m_t0_pos);
  r.data.assign(from, from + static_cast<std::ptrdiff_t>(n));
  m_t0_pos += n;
  const std::size_t rest = left - n;
  if (rest == 0) {
    r.sw = pending.sw;
    m_t0_pending.reset();
    m_t0_pos = 0;
  } else {
    r.sw = static_cast<std::uint16_t>(core::sw::bytes_remaining_base | (rest >= 256 ? 0 : rest));
  }
  return r;
}

}  // namespace keyline::device
