// Station-side client of the device link (docs/design.md section 6): a TCP connection that carries vpcd
// frames (2-byte big-endian length || payload; 1-byte payloads are control messages). Used by the
// station, recovery and the device tests. docs/protocol.md describes the dialect on top.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

#include "keyline/core/apdu.h"
#include "keyline/core/bytes.h"
#include "keyline/core/device_channel.h"
#include "keyline/core/error.h"

namespace keyline::core {

struct DeviceLinkOptions {
  std::chrono::milliseconds connect_timeout{5000};
  // Deadline for one whole exchange of transmit(): the command, its chained parts and every GET
  // RESPONSE round, however the device splits or delays its frames. transmit_raw and get_atr give
  // each frame sent or received the same deadline. A device that stores and writes flash needs
  // ~400 ms.
  std::chrono::milliseconds io_timeout{30000};
  std::size_t max_chunk = 255;  // command chaining chunk for long command data (short APDUs)
  bool power_on = true;         // send vpcd power-on and read the ATR right after connecting
};

// IoError(Timeout) from the link: the answer (or the send) did not complete within io_timeout.
// waiting_for() names the command, e.g. "APDU 80 E2 88 03" or "vpcd get ATR" (never its data); for
// transmit() the command given to it, not the GET RESPONSE or chained part under way.
class LinkTimeout : public IoError {
 public:
  LinkTimeout(const std::string& message, std::string waiting_for)
      : IoError(ErrorCode::Timeout, message), m_waiting_for(std::move(waiting_for)) {}
  const std::string& waiting_for() const noexcept { return m_waiting_for; }

 private:
  std::string m_waiting_for;
};

// Sees every byte that crosses the link, in order: outbound = station to device.
using LinkCapture = std::function<void(bool outbound, const std::uint8_t* data, std::size_t len)>;

// The TCP vpcd-framing DeviceChannel (docs/readers.md, `HOST:PORT`).
class DeviceLink : public DeviceChannel {
 public:
  DeviceLink(std::string host, int port, DeviceLinkOptions options = {});
  ~DeviceLink() override;
  DeviceLink(const DeviceLink&) = delete;
  DeviceLink& operator=(const DeviceLink&) = delete;

  // "127.0.0.1:7001" -> {"127.0.0.1", 7001}. Throws ConfigError(Config). Port 0 ("any free port")
  // only for listeners.
  static std::pair<std::string, int> parse_endpoint(std::string_view host_port, bool allow_port_zero = false);

  // Throws IoError(Network) when the device cannot be reached, LinkTimeout on a timeout.
  void connect() override;
  void close() noexcept override;
  void reconnect();
  bool connected() const noexcept override { return m_fd >= 0; }
  // The emulator takes extended length; a station that turned it off (disable_extended_length)
  // gets short APDUs: Ne at most 256 a round, data chained in parts of at most 255.
  bool extended_length() const noexcept override { return m_extended; }
  void disable_extended_length() noexcept override { m_extended = false; }
  const std::string& address() const noexcept override { return m_address; }

  void set_capture(LinkCapture capture) { m_capture = std::move(capture); }
  const Bytes& atr() const noexcept override { return m_atr; }

  // vpcd control messages: power off / on / reset send no answer; get ATR does.
  void control(std::uint8_t code);
  Bytes get_atr();

  // One frame out, one frame in (no chaining, no GET RESPONSE); the bytes go out as given.
  SecureBytes transmit_raw(const SecureBytes& command_apdu);
  // Full exchange via core::transceive: command chaining for long data, 61XX collected with GET
  // RESPONSE, all within one io_timeout (LinkTimeout). The answer's data is at most max_response
  // bytes and each frame's within the Le it answers (FormatError(BadApdu) otherwise): pass the size
  // of the answer expected, e.g. core::applet::kStatusSizeWithImei for STATUS.
  ResponseApdu transmit(const CommandApdu& command, std::size_t max_response = kMaxResponseDefault) override;

 private:
  using Deadline = std::chrono::steady_clock::time_point;
  void send_frame(const std::uint8_t* payload, std::size_t len);
  // `what` names the command the frame answers, for the timeout error.
  SecureBytes receive_frame(const std::string& what);
  void read_exact(std::uint8_t* out, std::size_t len, Deadline deadline, const std::string& what);
  // The deadline of a frame starting now: the exchange's within transmit(), else io_timeout from now.
  Deadline frame_deadline() const;
  // Before one blocking send or recv: LinkTimeout once the deadline has passed, else the socket
  // timeout (`current`) made to end at the deadline, within a millisecond.
  void fit_timeout(int option, Deadline deadline, std::chrono::microseconds& current, const std::string& what,
                   const char* doing);
  // Sets SO_RCVTIMEO or SO_SNDTIMEO to t unless `current` (what it is set to now) already says so.
  void set_timeout(int option, std::chrono::microseconds t, std::chrono::microseconds& current);
  [[noreturn]] void timed_out(const std::string& what, const char* doing);

  std::string m_host;
  int m_port;
  std::string m_address;  // HOST:PORT
  bool m_extended = true;
  DeviceLinkOptions m_options;
  int m_fd = -1;
  Bytes m_atr;
  LinkCapture m_capture;
  // Bytes received beyond the frame being read (a frame's header and body usually come in one
  // segment: one recv per frame instead of a poll and a recv for each of the two).
  SecureBytes m_rbuf;  // a response may carry key material (KPS), so it is wiped like one
  std::size_t m_rpos = 0;  // m_rbuf[m_rpos, m_rend) is received and not yet read
  std::size_t m_rend = 0;
  std::chrono::microseconds m_recv_timeout{0};  // what SO_RCVTIMEO is set to now
  std::chrono::microseconds m_send_timeout{0};  // and SO_SNDTIMEO
  std::string m_last_command;                   // names the command the next answer belongs to
  std::string m_exchange;                       // the command transmit() is exchanging; empty outside
  Deadline m_exchange_deadline{};
};

}  // namespace keyline::core
