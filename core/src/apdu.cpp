#include "keyline/core/apdu.h"

#include <algorithm>
#include <cstdio>

#include "keyline/core/error.h"
#include "keyline/core/flash_image.h"

namespace keyline::core {

namespace {

constexpr std::size_t kShortLcMax = 255;
constexpr std::uint32_t kShortLeMax = 256;
constexpr std::size_t kExtendedLcMax = 65535;
constexpr std::uint32_t kExtendedLeMax = 65536;

std::string sw_hex(std::uint16_t sw) {
  char buf[5];
  std::snprintf(buf, sizeof buf, "%04X", static_cast<unsigned>(sw));
  return buf;
}

[[noreturn]] void bad_apdu(const std::string& why) { throw FormatError(ErrorCode::BadApdu, why); }

}  // namespace

std::string sw_text(std::uint16_t sw) {
  const std::string code = sw_hex(sw);
  const unsigned sw2 = sw & 0xFF;
  switch (sw) {
    case sw::ok: return code + " success";
    case sw::wrong_length: return code + " wrong length";
    case sw::security_not_satisfied: return code + " security status not satisfied";
    case sw::conditions_not_satisfied: return code + " conditions of use not satisfied";
    case sw::wrong_data: return code + " incorrect parameters in the command data field";
    case sw::file_not_found: return code + " file or application not found";
    case sw::incorrect_p1p2: return code + " incorrect parameters P1-P2";
    case sw::referenced_data_not_found: return code + " referenced data not found";
    case sw::ins_not_supported: return code + " instruction code not supported or invalid";
    case sw::cla_not_supported: return code + " class not supported";
    case sw::unknown_error: return code + " no precise diagnosis";
    default: break;
  }
  // ISO 7816-4 section 5.6, table 5: 61XX and 6CXX carry a length in SW2.
  if ((sw & 0xFF00) == sw::bytes_remaining_base)
    return code + " " + (sw2 == 0 ? std::string("256 or more") : std::to_string(sw2)) + " bytes still available";
  if ((sw & 0xFF00) == 0x6C00)
    return code + " wrong Le field; " + std::to_string(sw2 == 0 ? 256u : sw2) + " bytes available";
  return code + " unknown status";
}

SecureBytes encode_command(const CommandApdu& c) {
  const std::size_t lc = c.data.size();
  if (lc > kExtendedLcMax) bad_apdu("command data of " + std::to_string(lc) + " bytes exceeds 65535");
  if (c.le && (*c.le == 0 || *c.le > kExtendedLeMax))
    bad_apdu("Le must be 1..65536 (256 or 65536 for 'all'), got " + std::to_string(*c.le));
  // ISO 7816-4 section 5.2: Lc and Le are either both short or both extended.
  const bool extended = c.extended || lc > kShortLcMax || (c.le && *c.le > kShortLeMax);

  SecureBytes out{c.cla, c.ins, c.p1, c.p2};
  if (!extended) {
    if (lc > 0) {
      out.push_back(static_cast<std::uint8_t>(lc));
      out.insert(out.end(), c.data.begin(), c.data.end());
    }
    if (c.le) out.push_back(static_cast<std::uint8_t>(*c.le == kShortLeMax ? 0 : *c.le));
    return out;
  }
  if (lc == 0 && !c.le) return out;  // case 1 has no length fields to extend
  out.push_back(0x00);  // extended marker: the first byte of an extended Lc, or of case 2E's Le
  if (lc > 0) {
    out.push_back(static_cast<std::uint8_t>(lc >> 8));
    out.push_back(static_cast<std::uint8_t>(lc));
    out.insert(out.end(), c.data.begin(), c.data.end());
  }
  if (c.le) {
    const std::uint32_t le = *c.le == kExtendedLeMax ? 0 : *c.le;
    out.push_back(static_cast<std::uint8_t>(le >> 8));
    out.push_back(static_cast<std::uint8_t>(le));
  }
  return out;
}

CommandApdu decode_command(const std::uint8_t* data, std::size_t len) {
  if (len < 4) bad_apdu("command APDU shorter than its 4-byte header");
  CommandApdu c;
  c.cla = data[0];
  c.ins = data[1];
  c.p1 = data[2];
  c.p2 = data[3];
  if (len == 4) return c;  // case 1
  const std::size_t body = len - 4;
  const std::uint8_t* b = data + 4;

  if (body == 1) {  // case 2S
    c.le = b[0] == 0 ? kShortLeMax : b[0];
    return c;
  }
  if (b[0] != 0) {  // short Lc: case 3S or 4S
    const std::size_t lc = b[0];
    if (body == 1 + lc) {
      c.data.assign(b + 1, b + 1 + lc);
      return c;
    }
    if (body == 2 + lc) {
      c.data.assign(b + 1, b + 1 + lc);
      c.le = b[1 + lc] == 0 ? kShortLeMax : b[1 + lc];
      return c;
    }
    bad_apdu("short Lc " + std::to_string(lc) + " does not match " + std::to_string(body - 1) + " bytes after it");
  }

  // b[0] == 0 and more follows: the extended form.
  c.extended = true;
  if (body < 3) bad_apdu("truncated extended length field");
  const std::size_t n = (std::size_t{b[1]} << 8) | b[2];
  if (body == 3) {  // case 2E
    c.le = n == 0 ? kExtendedLeMax : static_cast<std::uint32_t>(n);
    return c;
  }
  // Cases 3E/4E: n is Lc, and an extended Lc of zero is not a valid encoding (section 5.2).
  if (n == 0) bad_apdu("extended Lc of zero");
  if (body == 3 + n) {
    c.data.assign(b + 3, b + 3 + n);
    return c;
  }
  if (body == 5 + n) {
    c.data.assign(b + 3, b + 3 + n);
    const std::size_t le = (std::size_t{b[3 + n]} << 8) | b[4 + n];
    c.le = le == 0 ? kExtendedLeMax : static_cast<std::uint32_t>(le);
    return c;
  }
  bad_apdu("extended Lc " + std::to_string(n) + " does not match " + std::to_string(body - 3) + " bytes after it");
}

SecureBytes encode_response(const ResponseApdu& r) {
  SecureBytes out;
  out.reserve(r.data.size() + 2);
  out.insert(out.end(), r.data.begin(), r.data.end());
  out.push_back(r.sw1());
  out.push_back(r.sw2());
  return out;
}

ResponseApdu decode_response(const std::uint8_t* data, std::size_t len) {
  if (len < 2) bad_apdu("response APDU shorter than SW1 SW2");
  ResponseApdu r;
  r.data.assign(data, data + len - 2);
  r.sw = static_cast<std::uint16_t>((data[len - 2] << 8) | data[len - 1]);
  return r;
}

std::vector<CommandApdu> chain_command(const CommandApdu& c, std::size_t max_chunk) {
  if (max_chunk == 0) bad_apdu("command chaining needs a chunk size of at least 1");
  if (c.data.size() <= max_chunk) return {c};
  std::vector<CommandApdu> parts;
  for (std::size_t pos = 0; pos < c.data.size(); pos += max_chunk) {
    const std::size_t n = std::min(max_chunk, c.data.size() - pos);
    const bool last = pos + n == c.data.size();
    CommandApdu p;
    // ISO 7816-4 section 5.4.1: b5 of CLA set means "not the last command of a chain"; the
    // expected length belongs to the last command only.
    p.cla = last ? c.cla : static_cast<std::uint8_t>(c.cla | 0x10);
    p.ins = c.ins;
    p.p1 = c.p1;
    p.p2 = c.p2;
    p.extended = c.extended;
    p.data.assign(c.data.begin() + static_cast<std::ptrdiff_t>(pos),
                  c.data.begin() + static_cast<std::ptrdiff_t>(pos + n));
    if (last) p.le = c.le;
    parts.push_back(std::move(p));
  }
  return parts;
}

static_assert(kMaxResponseDefault == kFlashMaxSize, "the default cap is the largest applet answer, a backup package");

std::string command_header(const CommandApdu& c) {
  char buf[12];
  std::snprintf(buf, sizeof buf, "%02X %02X %02X %02X", static_cast<unsigned>(c.cla), static_cast<unsigned>(c.ins),
                static_cast<unsigned>(c.p1), static_cast<unsigned>(c.p2));
  return buf;
}

void check_answer(const CommandApdu& command, const CommandApdu& sent, bool get_response, const ResponseApdu& answer,
                  std::size_t gathered, std::size_t max_response) {
  const std::string which = (get_response ? "GET RESPONSE for " : "answer to ") + command_header(command);
  // ISO 7816-4 section 5.1: Ne is the maximum; Le absent means Ne = 0, and an Le of 00 (short) or
  // 0000 (extended) means 256 or 65536, which CommandApdu already holds as le.
  const std::size_t ne = sent.le.value_or(0);
  const std::size_t got = answer.data.size();
  if (got > ne)
    bad_apdu(which + " carries " + std::to_string(got) + " bytes where Le allows " + std::to_string(ne));
  if (got > max_response || gathered > max_response - got)
    bad_apdu(which + " exceeds the " + std::to_string(max_response) + "-byte cap on its answer");
  // A GET RESPONSE that brings nothing and announces more again would loop without progress.
  if (get_response && got == 0 && (answer.sw & 0xFF00) == sw::bytes_remaining_base)
    bad_apdu(which + " brings no data yet announces more");
}

ResponseApdu ResponseChainer::start(ResponseApdu full, std::size_t chunk) {
  m_full = std::move(full);
  m_pos = 0;
  // 61XX can announce at most 256 bytes per GET RESPONSE (ISO 7816-4 section 5.6).
  m_chunk = chunk == 0 || chunk > kShortLeMax ? kShortLeMax : chunk;
  if (m_full.data.size() <= m_chunk) {
    m_pos = m_full.data.size();
    return m_full;
  }
  return take(m_chunk);
}

ResponseApdu ResponseChainer::next(std::uint32_t le) {
  if (!pending()) {
    ResponseApdu r;
    r.sw = sw::conditions_not_satisfied;
    return r;
  }
  const std::size_t want = le == 0 ? kShortLeMax : le;
  return take(std::min(want, m_chunk));
}

void ResponseChainer::reset() noexcept {
  // Move-assigning frees the old buffer through the secure allocator, which zeroes it.
  m_full = ResponseApdu{};
  m_pos = 0;
}

ResponseApdu ResponseChainer::take(std::size_t n) {
  const std::size_t left = m_full.data.size() - m_pos;
  n = std::min(n, left);
  ResponseApdu r;
  r.data.assign(m_full.data.begin() + static_cast<std::ptrdiff_t>(m_pos),
                m_full.data.begin() + static_cast<std::ptrdiff_t>(m_pos + n));
  m_pos += n;
  const std::size_t rest = m_full.data.size() - m_pos;
  if (rest == 0) {
    r.sw = m_full.sw;
  } else {
    // SW2 = 00 stands for "256 or more" (section 5.6).
    r.sw = static_cast<std::uint16_t>(sw::bytes_remaining_base | (rest >= kShortLeMax ? 0 : rest));
  }
  return r;
}

}  // namespace keyline::core
