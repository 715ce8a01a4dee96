// ISO/IEC 7816-4:2020 section 5: command and response APDUs.
// Cases (5.2): 1 = header only; 2 = Le; 3 = Lc+data; 4 = Lc+data+Le; short and extended forms.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "keyline/core/bytes.h"
#include "keyline/core/error.h"

namespace keyline::core {

namespace sw {
constexpr std::uint16_t ok = 0x9000;
constexpr std::uint16_t wrong_length = 0x6700;
constexpr std::uint16_t security_not_satisfied = 0x6982;
constexpr std::uint16_t conditions_not_satisfied = 0x6985;
constexpr std::uint16_t wrong_data = 0x6A80;
constexpr std::uint16_t file_not_found = 0x6A82;
constexpr std::uint16_t incorrect_p1p2 = 0x6A86;
constexpr std::uint16_t referenced_data_not_found = 0x6A88;
constexpr std::uint16_t ins_not_supported = 0x6D00;
constexpr std::uint16_t cla_not_supported = 0x6E00;
constexpr std::uint16_t unknown_error = 0x6F00;
// 61XX: XX more bytes available with GET RESPONSE (ISO 7816-4 section 5.6).
constexpr std::uint16_t bytes_remaining_base = 0x6100;
}  // namespace sw

// Human-readable meaning of a status word ("6985 conditions of use not satisfied").
std::string sw_text(std::uint16_t sw);

struct CommandApdu {
  std::uint8_t cla = 0, ins = 0, p1 = 0, p2 = 0;
  SecureBytes data;           // command data (may carry secrets: STORE DATA of DGI 8xxx)
  std::optional<std::uint32_t> le;  // expected length; 256 (short) / 65536 (extended) mean "all"
  bool extended = false;      // force extended encoding

  bool chained() const noexcept { return (cla & 0x10) != 0; }  // ISO 7816-4 5.4.1 command chaining
};

struct ResponseApdu {
  SecureBytes data;
  std::uint16_t sw = sw::ok;
  std::uint8_t sw1() const noexcept { return static_cast<std::uint8_t>(sw >> 8); }
  std::uint8_t sw2() const noexcept { return static_cast<std::uint8_t>(sw & 0xFF); }
};

// Encodes, choosing short form when Lc <= 255 and Le <= 256 unless extended is set.
SecureBytes encode_command(const CommandApdu& c);
// Strict decode: Lc must match the bytes present, Le must be well-formed. Throws FormatError(BadApdu).
CommandApdu decode_command(const std::uint8_t* data, std::size_t len);
inline CommandApdu decode_command(const SecureBytes& b) { return decode_command(b.data(), b.size()); }
inline CommandApdu decode_command(const Bytes& b) { return decode_command(b.data(), b.size()); }

SecureBytes encode_response(const ResponseApdu& r);
// Needs at least SW1 SW2. Throws FormatError(BadApdu).
ResponseApdu decode_response(const std::uint8_t* data, std::size_t len);
inline ResponseApdu decode_response(const SecureBytes& b) { return decode_response(b.data(), b.size()); }
inline ResponseApdu decode_response(const Bytes& b) { return decode_response(b.data(), b.size()); }

// Splits long data into command-chained APDUs (CLA bit 0x10 on all but the last), each <= max_chunk.
std::vector<CommandApdu> chain_command(const CommandApdu& c, std::size_t max_chunk = 255);

// Serves a long response in 61XX pieces: the first call gives up to `chunk` bytes and 61XX,
// each GET RESPONSE (00 C0 00 00 XX) the next piece, the last one 9000.
class ResponseChainer {
 public:
  // Returns the first piece of `full` (which carries the final status word in full.sw).
  ResponseApdu start(ResponseApdu full, std::size_t chunk = 256);
  bool pending() const noexcept { return m_pos < m_full.data.size(); }
  // Answers a GET RESPONSE; 6985 when nothing is pending.
  ResponseApdu next(std::uint32_t le);
  void reset() noexcept;

 private:
  ResponseApdu take(std::size_t n);
  ResponseApdu m_full;
  std::size_t m_pos = 0;
  std::size_t m_chunk = 256;
};

// A device that keeps answering 61XX must not hold the client in a loop: 4096 GET RESPONSE rounds
// of 256 bytes carry 1 MiB, the largest answer keyline exchanges.
constexpr std::size_t kMaxGetResponseRounds = 4096;

// What transceive gathers for one command unless its caller names a smaller cap: the largest answer
// the applet protocol defines, a backup package of up to 1 MiB (core::kFlashMaxSize, docs/protocol.md
// section 2a). A caller that expects a 27-byte STATUS passes 27.
constexpr std::size_t kMaxResponseDefault = std::size_t{1} << 20;

// A command named by its header only, "80 CA DF 20": its data may carry key material.
std::string command_header(const CommandApdu& c);

// Checks one answer before transceive keeps it. `sent` is the APDU it answers (a part of `command`,
// a 6CXX re-send, or a GET RESPONSE when get_response is set); `gathered` is what is kept so far.
// Throws FormatError(BadApdu), naming command's header only, when the answer carries more than the
// Ne of `sent` (ISO 7816-4 section 5.1: Ne, given by Le and 0 without one, is the maximum length of
// the response data field), when it would take the gathered answer past `max_response`, or when a
// GET RESPONSE brings nothing yet announces more.
void check_answer(const CommandApdu& command, const CommandApdu& sent, bool get_response, const ResponseApdu& answer,
                  std::size_t gathered, std::size_t max_response);

// Client side: given a transmit function (takes SecureBytes, returns SecureBytes or Bytes), sends a command
// (chaining data when needed) and collects 61XX responses with GET RESPONSE until the final status
// word. A 6CXX answer (ISO 7816-4 section 5.6: wrong Le, XX available) re-sends the last command
// once with Le = XX. Every answer is held to check_answer, so a hostile device makes the client
// gather at most max_response bytes. Throws FormatError(BadApdu) on a malformed, over-long or
// over-cap response or an endless 61XX chain. The time the whole exchange may take is the transmit
// function's to bound (core::DeviceLink::transmit gives it one deadline).
template <class Transmit>
ResponseApdu transceive(Transmit&& transmit, const CommandApdu& c, std::size_t max_chunk = 255,
                        std::size_t max_response = kMaxResponseDefault) {
  auto exchange = [&](const CommandApdu& sent, std::size_t gathered, bool get_response) {
    ResponseApdu answer = decode_response(transmit(encode_command(sent)));
    check_answer(c, sent, get_response, answer, gathered, max_response);
    return answer;
  };
  ResponseApdu r;
  const std::vector<CommandApdu> parts = chain_command(c, max_chunk);
  for (const auto& part : parts) {
    r = exchange(part, 0, false);
    if (part.chained() && r.sw != sw::ok) return r;
  }
  if ((r.sw & 0xFF00) == 0x6C00) {
    CommandApdu again = parts.back();
    const std::uint8_t xx = static_cast<std::uint8_t>(r.sw & 0xFF);
    again.le = xx == 0 ? 256u : xx;
    r = exchange(again, 0, false);
  }
  SecureBytes all = std::move(r.data);
  std::size_t rounds = 0;
  while ((r.sw & 0xFF00) == sw::bytes_remaining_base) {
    if (++rounds > kMaxGetResponseRounds)
      throw FormatError(ErrorCode::BadApdu, "device answers 61XX without end to " + command_header(c));
    CommandApdu gr;
    gr.cla = 0x00;
    gr.ins = 0xC0;
    const std::uint8_t xx = static_cast<std::uint8_t>(r.sw & 0xFF);
    gr.le = xx == 0 ? 256u : xx;
    r = exchange(gr, all.size(), true);
    all.insert(all.end(), r.data.begin(), r.data.end());
  }
  r.data = std::move(all);
  return r;
}

}  // namespace keyline::core
