#include "keyline/core/vpcd.h"

#include <string>

#include "keyline/core/error.h"

namespace keyline::core {

namespace {
constexpr std::size_t kLengthPrefix = 2;
}  // namespace

SecureBytes encode_frame(const std::uint8_t* payload, std::size_t len) {
  if (len > vpcd::max_payload)
    throw FormatError(ErrorCode::FrameTooLarge, "frame payload of " + std::to_string(len) + " bytes exceeds " +
                                                    std::to_string(vpcd::max_payload));
  // vpcd has no empty message: a zero length would read as nothing on the other side.
  if (len == 0) throw FormatError(ErrorCode::BadFrame, "empty frame payload");
  SecureBytes out;
  out.reserve(kLengthPrefix + len);
  out.push_back(static_cast<std::uint8_t>(len >> 8));
  out.push_back(static_cast<std::uint8_t>(len));
  out.insert(out.end(), payload, payload + len);
  return out;
}

void FrameDecoder::feed(const std::uint8_t* data, std::size_t len) {
  if (len == 0) return;
  m_buf.insert(m_buf.end(), data, data + len);
}

std::optional<SecureBytes> FrameDecoder::next() {
  if (m_buf.size() < kLengthPrefix) return std::nullopt;
  const std::size_t n = (std::size_t{m_buf[0]} << 8) | m_buf[1];
  // Checked as soon as the prefix is here, before the payload is waited for, so a peer cannot
  // make us buffer a frame we will refuse anyway. The buffer is left as is: the stream has lost
  // its framing, and every later call reports the same error until the connection is dropped.
  if (n == 0) throw FormatError(ErrorCode::BadFrame, "zero-length frame");
  if (n > m_max)
    throw FormatError(ErrorCode::FrameTooLarge,
                      "frame of " + std::to_string(n) + " bytes exceeds the limit of " + std::to_string(m_max));
  if (m_buf.size() - kLengthPrefix < n) return std::nullopt;
  const auto begin = m_buf.begin() + static_cast<std::ptrdiff_t>(kLengthPrefix);
  const auto end = begin + static_cast<std::ptrdiff_t>(n);
  SecureBytes payload(begin, end);
  m_buf.erase(m_buf.begin(), end);
  return payload;
}

}  // namespace keyline::core
