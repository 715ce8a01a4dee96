#include "keyline/device/server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <set>

#include "keyline/core/vpcd.h"
#include "keyline/device/log.h"

namespace keyline::device {

namespace {

bool send_all(int fd, const std::uint8_t* data, std::size_t len) {
  std::size_t off = 0;
  while (off < len) {
    const ssize_t n = ::send(fd, data + off, len - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

bool send_frame(int fd, const std::uint8_t* payload, std::size_t len) {
  const core::SecureBytes frame = core::encode_frame(payload, len);
  return send_all(fd, frame.data(), frame.size());
}

}  // namespace

void serve_stream(Device& device, int fd, std::chrono::milliseconds idle_timeout, std::size_t max_frame,
                  const std::atomic<bool>& stopping) {
  const std::string who = device.chip().chip_id().str();
  Session session(device);
  core::FrameDecoder decoder(max_frame);
  std::size_t received = 0;
  const std::size_t drop_after = device.options().faults.drop_after_bytes;
  auto idle = std::chrono::milliseconds(0);
  std::uint8_t buf[16384];
  try {
    for (;;) {
      if (stopping) return;
      pollfd p{fd, POLLIN, 0};
      const int slice = 200;
      const int w = ::poll(&p, 1, slice);
      if (w < 0 && errno == EINTR) continue;
      if (w == 0) {
        idle += std::chrono::milliseconds(slice);
        if (idle_timeout.count() > 0 && idle >= idle_timeout) {
          log_line(who, "idle connection closed");
          return;
        }
        continue;
      }
      idle = std::chrono::milliseconds(0);
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      std::size_t take = static_cast<std::size_t>(n);
      if (drop_after) {
        // Fault injection: the link breaks once this connection has carried drop_after bytes in.
        if (received + take >= drop_after) {
          log_line(who, "injected connection drop after " + std::to_string(drop_after) + " bytes");
          return;
        }
      }
      received += take;
      decoder.feed(buf, take);
      while (auto payload = decoder.next()) {
        if (payload->size() == 1) {
          const std::uint8_t ctl = (*payload)[0];
          if (ctl == core::vpcd::get_atr) {
            if (!send_frame(fd, kAtr, sizeof kAtr)) return;
          } else if (ctl == core::vpcd::power_off || ctl == core::vpcd::power_on || ctl == core::vpcd::reset) {
            session.reset();
          } else {
            log_line(who, "unknown vpcd control byte, connection closed");
            return;
          }
          continue;
        }
        core::SecureBytes response;
        try {
          response = session.process(payload->data(), payload->size());
        } catch (const core::Error& e) {
          if (e.code() == error::PowerCut) {
            device.power_restored();
            return;
          }
          throw;
        }
        if (!send_frame(fd, response.data(), response.size())) return;
      }
    }
  } catch (const core::Error& e) {
    log_line(who, "connection closed, error " + std::to_string(e.numeric()) + ": " + e.what());
  } catch (const std::exception& e) {
    log_line(who, std::string("connection closed: ") + e.what());
  }
}

struct Server::Slot {
  std::unique_ptr<Device> device;
  int listen_fd = -1;
  int port = 0;
  std::thread acceptor;
  std::mutex mutex;
  std::condition_variable idle;
  std::set<int> connections;
};

Server::Server(const std::vector<fs::path>& device_dirs, ServerOptions options) : m_options(std::move(options)) {
  int next_port = m_options.base_port;
  for (const auto& dir : device_dirs) {
    auto slot = std::make_unique<Slot>();
    slot->device = std::make_unique<Device>(Chip::load(dir), m_options.device);
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw core::IoError(core::ErrorCode::Network, "socket failed");
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    if (::inet_pton(AF_INET, m_options.host.c_str(), &a.sin_addr) != 1) {
      ::close(fd);
      throw core::ConfigError(core::ErrorCode::Config, "listen host must be an IPv4 address: " + m_options.host);
    }
    a.sin_port = htons(static_cast<std::uint16_t>(next_port));
    socklen_t len = sizeof a;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 16) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      const std::string reason = std::strerror(errno);
      ::close(fd);
      throw core::IoError(core::ErrorCode::Network,
                          "cannot listen on " + m_options.host + ":" + std::to_string(next_port) + ": " + reason);
    }
    slot->listen_fd = fd;
    slot->port = ntohs(a.sin_port);
    if (next_port) ++next_port;
    m_slots.push_back(std::move(slot));
  }
}

Server::~Server() { stop(); }

void Server::start() {
  for (auto& s : m_slots) {
    Slot* slot = s.get();
    slot->acceptor = std::thread([this, slot] { accept_loop(*slot); });
  }
}

void Server::accept_loop(Slot& slot) {
  while (!m_stopping) {
    pollfd p{slot.listen_fd, POLLIN, 0};
    const int w = ::poll(&p, 1, 200);
    if (w <= 0) continue;
    const int fd = ::accept4(slot.listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    {
      std::lock_guard<std::mutex> lock(slot.mutex);
      slot.connections.insert(fd);
    }
    std::thread([this, &slot, fd] { serve_connection(slot, fd); }).detach();
  }
}

void Server::serve_connection(Slot& slot, int fd) {
  serve_stream(*slot.device, fd, m_options.idle_timeout, m_options.max_frame, m_stopping);
  std::lock_guard<std::mutex> lock(slot.mutex);
  slot.connections.erase(fd);
  ::close(fd);
  slot.idle.notify_all();
}

void Server::stop() noexcept {
  m_stopping = true;
  for (auto& s : m_slots) {
    if (s->acceptor.joinable()) s->acceptor.join();
    std::unique_lock<std::mutex> lock(s->mutex);
    for (int fd : s->connections) ::shutdown(fd, SHUT_RDWR);
    s->idle.wait(lock, [&] { return s->connections.empty(); });
    if (s->listen_fd >= 0) ::close(s->listen_fd);
    s->listen_fd = -1;
  }
}

void Server::wait() {
  while (!m_stopping) std::this_thread::sleep_for(std::chrono::milliseconds(200));
}

std::vector<int> Server::ports() const {
  std::vector<int> out;
  for (const auto& s : m_slots) out.push_back(s->port);
  return out;
}

Device& Server::device(std::size_t index) { return *m_slots.at(index)->device; }

void serve_vpcd(Device& device, const std::string& host, int port, const std::atomic<bool>& stopping,
                std::chrono::milliseconds retry_for) {
  const std::string who = device.chip().chip_id().str();
  auto deadline = std::chrono::steady_clock::now() + retry_for;
  while (!stopping) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int fd = -1;
    if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) == 0) {
      for (addrinfo* a = res; a && fd < 0; a = a->ai_next) {
        fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd >= 0 && ::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
          ::close(fd);
          fd = -1;
        }
      }
      ::freeaddrinfo(res);
    }
    if (fd < 0) {
      if (std::chrono::steady_clock::now() > deadline)
        throw core::IoError(core::ErrorCode::Network, "vpcd at " + host + ":" + std::to_string(port) + " unreachable");
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    log_line(who, "connected to vpcd " + host + ":" + std::to_string(port));
    // pcscd keeps the reader link open for as long as it runs: no idle timeout here.
    serve_stream(device, fd, std::chrono::milliseconds(0), core::vpcd::max_payload, stopping);
    ::close(fd);
    deadline = std::chrono::steady_clock::now() + retry_for;
  }
}

}  // namespace keyline::device
