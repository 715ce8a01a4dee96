#include "keyline/core/device_link.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "keyline/core/error.h"
#include "keyline/core/vpcd.h"

namespace keyline::core {

namespace {

constexpr std::size_t kReadChunk = 16 * 1024;

timeval to_timeval(std::chrono::microseconds t) {
  // 0 would mean "no timeout" to SO_RCVTIMEO: never less than 1 us.
  const auto us = std::max<std::int64_t>(t.count(), 1);
  return timeval{static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
}

std::string hex_byte(std::uint8_t b) {
  static const char* digits = "0123456789ABCDEF";
  return {digits[b >> 4], digits[b & 0x0F]};
}

// Names a command frame by its header only: the data may carry key material.
std::string describe_frame(const std::uint8_t* payload, std::size_t len) {
  if (len == 1) {
    switch (payload[0]) {
      case vpcd::get_atr: return "vpcd get ATR";
      case vpcd::power_on: return "vpcd power on";
      case vpcd::power_off: return "vpcd power off";
      case vpcd::reset: return "vpcd reset";
      default: return "vpcd control " + hex_byte(payload[0]);
    }
  }
  std::string out = "APDU";
  for (std::size_t i = 0; i < std::min<std::size_t>(len, 4); ++i) out += " " + hex_byte(payload[i]);
  return out;
}

int wait_for(int fd, short events, std::chrono::milliseconds timeout) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (r < 0 && errno == EINTR) continue;
    return r;
  }
}

}  // namespace

DeviceLink::DeviceLink(std::string host, int port, DeviceLinkOptions options)
    : m_host(std::move(host)), m_port(port), m_address(m_host + ":" + std::to_string(port)), m_options(options) {}

DeviceLink::~DeviceLink() { close(); }

std::pair<std::string, int> DeviceLink::parse_endpoint(std::string_view host_port, bool allow_port_zero) {
  const auto colon = host_port.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 >= host_port.size())
    throw ConfigError(ErrorCode::Config, "endpoint must be HOST:PORT");
  int port = 0;
  for (char c : host_port.substr(colon + 1)) {
    if (c < '0' || c > '9') throw ConfigError(ErrorCode::Config, "endpoint port is not a number");
    port = port * 10 + (c - '0');
    if (port > 65535) throw ConfigError(ErrorCode::Config, "endpoint port out of range");
  }
  if (port == 0 && !allow_port_zero) throw ConfigError(ErrorCode::Config, "endpoint port out of range");
  return {std::string(host_port.substr(0, colon)), port};
}

void DeviceLink::connect() {
  close();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(m_port);
  if (::getaddrinfo(m_host.c_str(), port.c_str(), &hints, &res) != 0 || !res)
    throw IoError(ErrorCode::Network, "cannot resolve device host " + m_host);
  std::string reason = "no address";
  for (addrinfo* a = res; a; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      if (wait_for(fd, POLLOUT, m_options.connect_timeout) <= 0) {
        ::close(fd);
        reason = "connect timed out";
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err == 0 ? 0 : -1;
      if (err) errno = err;
    }
    if (rc != 0) {
      reason = std::strerror(errno);
      ::close(fd);
      continue;
    }
    // Blocking from here on; a recv gives up when SO_RCVTIMEO runs out (EAGAIN), so waiting costs no
    // poll() call of its own. read_exact shortens it to what is left of the answer's deadline.
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    m_fd = fd;
    m_recv_timeout = m_send_timeout = std::chrono::microseconds(-1);
    set_timeout(SO_RCVTIMEO, m_options.io_timeout, m_recv_timeout);
    set_timeout(SO_SNDTIMEO, m_options.io_timeout, m_send_timeout);
    break;
  }
  ::freeaddrinfo(res);
  if (m_fd < 0) throw IoError(ErrorCode::Network, "device " + m_host + ":" + port + " unreachable: " + reason);
  if (m_options.power_on) {
    control(vpcd::power_on);
    m_atr = get_atr();
  }
}

void DeviceLink::close() noexcept {
  if (m_fd >= 0) ::close(m_fd);
  m_fd = -1;
  m_rbuf.clear();
  m_rpos = m_rend = 0;
}

void DeviceLink::reconnect() {
  close();
  connect();
}

void DeviceLink::send_frame(const std::uint8_t* payload, std::size_t len) {
  if (m_fd < 0) throw IoError(ErrorCode::Network, "device link is not connected");
  const SecureBytes frame = encode_frame(payload, len);
  m_last_command = describe_frame(payload, len);
  if (m_capture) m_capture(true, frame.data(), frame.size());
  // A device that does not read its commands, or reads them a byte at a time, cannot hold a send
  // past one io timeout either: the same deadline rule as for an answer, over the whole frame.
  const Deadline deadline = frame_deadline();
  std::size_t off = 0;
  while (off < frame.size()) {
    fit_timeout(SO_SNDTIMEO, deadline, m_send_timeout, m_last_command, "take");
    const ssize_t n = ::send(m_fd, frame.data() + off, frame.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) timed_out(m_last_command, "take");
    if (n <= 0) {
      close();
      throw IoError(ErrorCode::Network, "device link closed while sending");
    }
    off += static_cast<std::size_t>(n);
  }
}

void DeviceLink::set_timeout(int option, std::chrono::microseconds t, std::chrono::microseconds& current) {
  if (t == current) return;
  const timeval tv = to_timeval(t);
  ::setsockopt(m_fd, SOL_SOCKET, option, &tv, sizeof tv);
  current = t;
}

DeviceLink::Deadline DeviceLink::frame_deadline() const {
  return m_exchange.empty() ? std::chrono::steady_clock::now() + m_options.io_timeout : m_exchange_deadline;
}

void DeviceLink::fit_timeout(int option, Deadline deadline, std::chrono::microseconds& current,
                             const std::string& what, const char* doing) {
  // Each blocking call waits at most for what is left of the deadline, so a device that trickles
  // its answer a byte at a time still fails at the deadline; never for less, or a call would give
  // up early. The socket timeout is changed only when it is off by more than a millisecond: the
  // first frame of an exchange (the usual whole answer in one segment) costs no setsockopt.
  const auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - std::chrono::steady_clock::now());
  if (left.count() <= 0) timed_out(what, doing);
  if (current < left || current - left > std::chrono::milliseconds(1)) set_timeout(option, left, current);
}

void DeviceLink::timed_out(const std::string& what, const char* doing) {
  close();
  const std::string ms = std::to_string(m_options.io_timeout.count());
  const std::string device = "device " + m_host + ":" + std::to_string(m_port);
  if (m_exchange.empty() || m_exchange == what)
    throw LinkTimeout(device + " did not " + doing + " " + what + " within " + ms + " ms", what);
  // Within transmit() the deadline is the whole exchange's: name the command, and the frame under way.
  throw LinkTimeout(device + " did not complete " + m_exchange + " within " + ms + " ms (still to " + doing + " " +
                        what + ")",
                    m_exchange);
}

void DeviceLink::read_exact(std::uint8_t* out, std::size_t len, Deadline deadline, const std::string& what) {
  std::size_t off = 0;
  while (off < len) {
    if (m_rpos < m_rend) {
      const std::size_t take = std::min(len - off, m_rend - m_rpos);
      std::memcpy(out + off, m_rbuf.data() + m_rpos, take);
      m_rpos += take;
      off += take;
      continue;
    }
    fit_timeout(SO_RCVTIMEO, deadline, m_recv_timeout, what, "answer");
    // Large remainders go straight to the caller; small ones through the buffer, which then holds
    // whatever else the segment carried (the next frame's header and body).
    const bool direct = len - off >= kReadChunk;
    if (!direct && m_rbuf.size() < kReadChunk) m_rbuf.resize(kReadChunk);  // once per connection
    std::uint8_t* dst = direct ? out + off : m_rbuf.data();
    const ssize_t n = ::recv(m_fd, dst, direct ? len - off : kReadChunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) timed_out(what, "answer");
    if (n <= 0) {
      close();
      throw IoError(ErrorCode::Network, "device link closed by the device");
    }
    if (m_capture) m_capture(false, dst, static_cast<std::size_t>(n));
    if (direct) {
      off += static_cast<std::size_t>(n);
    } else {
      m_rpos = 0;
      m_rend = static_cast<std::size_t>(n);
    }
  }
}

SecureBytes DeviceLink::receive_frame(const std::string& what) {
  if (m_fd < 0) throw IoError(ErrorCode::Network, "device link is not connected");
  // One deadline for the whole frame, header and body, or for the whole exchange (docs/protocol.md §1).
  const Deadline deadline = frame_deadline();
  std::uint8_t head[2];
  read_exact(head, 2, deadline, what);
  const std::size_t len = (static_cast<std::size_t>(head[0]) << 8) | head[1];
  if (len == 0) {
    close();
    throw FormatError(ErrorCode::BadFrame, "device sent an empty frame");
  }
  SecureBytes payload(len);
  read_exact(payload.data(), len, deadline, what);
  return payload;
}

void DeviceLink::control(std::uint8_t code) {
  send_frame(&code, 1);
}

Bytes DeviceLink::get_atr() {
  control(vpcd::get_atr);
  const SecureBytes atr = receive_frame(m_last_command);
  return Bytes(atr.begin(), atr.end());
}

SecureBytes DeviceLink::transmit_raw(const SecureBytes& command_apdu) {
  send_frame(command_apdu.data(), command_apdu.size());
  SecureBytes r = receive_frame(m_last_command);
  if (r.size() < 2) {
    close();
    throw FormatError(ErrorCode::BadApdu, "device answered without a status word");
  }
  return r;
}

ResponseApdu DeviceLink::transmit(const CommandApdu& command, std::size_t max_response) {
  // One deadline for the command, its chained parts and all GET RESPONSE rounds: a per-frame one let
  // a device answering each of 4096 rounds just in time hold the caller 4096 x io_timeout.
  struct Scope {
    std::string& exchange;
    ~Scope() { exchange.clear(); }
  } scope{m_exchange};
  m_exchange = "APDU " + command_header(command);
  m_exchange_deadline = std::chrono::steady_clock::now() + m_options.io_timeout;
  // Short APDUs once extended length is off: Ne at most 256 a round (the rest by 61XX), data in
  // chained parts. The command is copied only then, so the usual exchange costs no copy of its data.
  // A command with `extended` set is sent as it is: its caller forces the extended form.
  const CommandApdu* c = &command;
  CommandApdu shortened;
  std::size_t chunk = m_options.max_chunk;
  if (!m_extended && !command.extended) {
    shortened = command;
    if (shortened.le && *shortened.le > 256) shortened.le = 256;
    chunk = std::min<std::size_t>(chunk, 255);
    c = &shortened;
  }
  try {
    return transceive([this](const SecureBytes& apdu) { return transmit_raw(apdu); }, *c, chunk, max_response);
  } catch (const FormatError&) {
    // A device that broke the dialect is not asked again on this connection (it may hold a 61XX
    // chain or a half-gathered command): the caller reconnects if it wants to go on.
    close();
    throw;
  }
}

}  // namespace keyline::core
