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
    : m_host(std::move(host)), m_port(port), m_options(options) {}

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
    // Blocking from here on; a read gives up after the io timeout (SO_RCVTIMEO: recv then fails with
    // EAGAIN), so waiting costs no poll() call of its own.
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(m_options.io_timeout).count();
    timeval tv{static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    m_fd = fd;
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
  if (m_capture) m_capture(true, frame.data(), frame.size());
  std::size_t off = 0;
  while (off < frame.size()) {
    const ssize_t n = ::send(m_fd, frame.data() + off, frame.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close();
      throw IoError(ErrorCode::Network, "device link closed while sending");
    }
    off += static_cast<std::size_t>(n);
  }
}

void DeviceLink::read_exact(std::uint8_t* out, std::size_t len) {
  std::size_t off = 0;
  while (off < len) {
    if (m_rpos < m_rend) {
      const std::size_t take = std::min(len - off, m_rend - m_rpos);
      std::memcpy(out + off, m_rbuf.data() + m_rpos, take);
      m_rpos += take;
      off += take;
      continue;
    }
    // Large remainders go straight to the caller; small ones through the buffer, which then holds
    // whatever else the segment carried (the next frame's header and body).
    const bool direct = len - off >= kReadChunk;
    if (!direct && m_rbuf.size() < kReadChunk) m_rbuf.resize(kReadChunk);  // once per connection
    std::uint8_t* dst = direct ? out + off : m_rbuf.data();
    const ssize_t n = ::recv(m_fd, dst, direct ? len - off : kReadChunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      close();
      throw IoError(ErrorCode::Timeout, "device did not answer in time");
    }
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

SecureBytes DeviceLink::receive_frame() {
  if (m_fd < 0) throw IoError(ErrorCode::Network, "device link is not connected");
  std::uint8_t head[2];
  read_exact(head, 2);
  const std::size_t len = (static_cast<std::size_t>(head[0]) << 8) | head[1];
  if (len == 0) {
    close();
    throw FormatError(ErrorCode::BadFrame, "device sent an empty frame");
  }
  SecureBytes payload(len);
  read_exact(payload.data(), len);
  return payload;
}

void DeviceLink::control(std::uint8_t code) {
  send_frame(&code, 1);
}

Bytes DeviceLink::get_atr() {
  control(vpcd::get_atr);
  const SecureBytes atr = receive_frame();
  return Bytes(atr.begin(), atr.end());
}

SecureBytes DeviceLink::transmit_raw(const SecureBytes& command_apdu) {
  send_frame(command_apdu.data(), command_apdu.size());
  SecureBytes r = receive_frame();
  if (r.size() < 2) {
    close();
    throw FormatError(ErrorCode::BadApdu, "device answered without a status word");
  }
  return r;
}

ResponseApdu DeviceLink::transmit(const CommandApdu& command) {
  return transceive([this](const SecureBytes& apdu) { return transmit_raw(apdu); }, command, m_options.max_chunk);
}

}  // namespace keyline::core
