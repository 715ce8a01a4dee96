// Device link framing as in the vsmartcard vpcd protocol: each message is a 2-byte big-endian
// length followed by that many bytes. A 1-byte payload is a control message; longer ones are APDUs.
#pragma once

#include <cstdint>
#include <optional>

#include "keyline/core/bytes.h"

namespace keyline::core {

namespace vpcd {
constexpr std::uint8_t power_off = 0x00;
constexpr std::uint8_t power_on = 0x01;
constexpr std::uint8_t reset = 0x02;
constexpr std::uint8_t get_atr = 0x04;
// The 2-byte length prefix caps a payload at 65535 bytes. A case 4E APDU has 9 bytes around its
// data (4 header + 3 Lc + 2 Le), so at most 65526 data bytes cross the link in one frame; longer
// data must be chained (chain_command). Anything longer is refused.
constexpr std::size_t max_payload = 65535;
}  // namespace vpcd

SecureBytes encode_frame(const std::uint8_t* payload, std::size_t len);  // throws FrameTooLarge
inline SecureBytes encode_frame(const SecureBytes& p) { return encode_frame(p.data(), p.size()); }

// Incremental decoder for a byte stream that arrives in arbitrary pieces (partial reads).
class FrameDecoder {
 public:
  explicit FrameDecoder(std::size_t max_payload = vpcd::max_payload) : m_max(max_payload) {}
  void feed(const std::uint8_t* data, std::size_t len);
  // The next complete payload, if one has arrived. Throws FormatError(FrameTooLarge) when the
  // announced length exceeds the maximum, FormatError(BadFrame) on a zero-length frame.
  std::optional<SecureBytes> next();
  std::size_t buffered() const noexcept { return m_buf.size(); }

 private:
  std::size_t m_max;
  SecureBytes m_buf;
};

}  // namespace keyline::core
