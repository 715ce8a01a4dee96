#include "keyline/device/server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <system_error>

#include "keyline/core/vpcd.h"
#include "keyline/device/log.h"

namespace keyline::device {

namespace {

// How often a connection without an idle timeout looks at its stop flag.
constexpr std::chrono::milliseconds kStopSlice{200};
// Connections the kernel completes for a device before the acceptor takes them. A burst beyond it
// has its SYNs dropped and retried a second later, so it is sized for a burst, not for the line.
constexpr int kBacklog = 128;

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

timeval to_timeval(std::chrono::milliseconds t) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(t.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
  return tv;
}

// At most one line a second for events a client can repeat at will (refused connections, spent
// budget); the ones in between are counted into the next line, so a flood cannot fill the log.
class QuietLog {
 public:
  void note(const std::string& who, const std::string& what) {
    std::lock_guard<std::mutex> lock(m_mutex);
    const auto now = std::chrono::steady_clock::now();
    if (m_logged && now - m_last < std::chrono::seconds(1)) {
      ++m_skipped;
      return;
    }
    std::string line = what;
    if (m_skipped) line += " (and " + std::to_string(m_skipped) + " more since the last such line)";
    m_skipped = 0;
    m_last = now;
    m_logged = true;
    log_line(who, line);
  }

 private:
  std::mutex m_mutex;
  std::chrono::steady_clock::time_point m_last;
  bool m_logged = false;
  std::uint64_t m_skipped = 0;
};

QuietLog g_refusal_log;
QuietLog g_budget_log;

// This connection's share of the memory budget, given back on every path out.
class BudgetShare {
 public:
  explicit BudgetShare(MemoryBudget* budget) noexcept : m_budget(budget) {}
  ~BudgetShare() {
    if (m_budget) m_budget->give(m_held);
  }
  BudgetShare(const BudgetShare&) = delete;
  BudgetShare& operator=(const BudgetShare&) = delete;
  // Grows or shrinks the share to `bytes`; false (share unchanged) when the budget cannot grow.
  bool resize(std::size_t bytes) noexcept {
    if (!m_budget) return true;
    if (bytes > m_held && !m_budget->take(bytes - m_held)) return false;
    if (bytes < m_held) m_budget->give(m_held - bytes);
    m_held = bytes;
    return true;
  }
  std::size_t held() const noexcept { return m_held; }

 private:
  MemoryBudget* m_budget;
  std::size_t m_held = 0;
};

// Descriptors a running command holds at most at once: the flash and staging writes, the fuse burn
// and the file reads each open one file (write_atomic then one directory for its fsync) and close
// it before the next; two leave room for a library's own.
constexpr std::size_t kFdsPerCommand = 2;
// Beyond those open when the cap is set: the socket the acceptor closes when a connection is over
// a cap, and what libraries open later.
constexpr std::size_t kFdsSlack = 8;

// The most connections `fd_limit` descriptors carry next to the `in_use` ones (the listeners
// among them) without a command ever failing for want of one (EMFILE). A connection costs its
// socket; commands to one device run one at a time, so at most min(connections, devices) of them
// hold files at once.
std::size_t fd_connection_cap(std::size_t fd_limit, std::size_t in_use, std::size_t devices) {
  const std::size_t fixed = in_use + kFdsSlack;
  if (fd_limit <= fixed) return 0;
  const std::size_t room = fd_limit - fixed;
  if (room / (1 + kFdsPerCommand) >= devices) return room - devices * kFdsPerCommand;
  return room / (1 + kFdsPerCommand);
}

std::size_t open_files_limit() {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return SIZE_MAX;
  return static_cast<std::size_t>(r.rlim_cur);
}

// Descriptors open in this process now (the listing's own included: one more is the safe side).
std::size_t open_descriptors() {
  std::size_t n = 0;
  std::error_code ec;
  for (fs::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end; it.increment(ec)) ++n;
  return n;
}

bool out_of_descriptors(int err) { return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM; }

// One connection of serve_stream. Each step that returns false closes the connection.
class Connection {
 public:
  Connection(Device& device, int fd, std::chrono::milliseconds idle_timeout, std::size_t max_frame,
             MemoryBudget* budget)
      : m_device(device), m_fd(fd), m_idle(idle_timeout), m_who(device.chip().chip_id().str()), m_session(device),
        m_max_frame(max_frame), m_decoder(max_frame), m_share(budget), m_budget(budget),
        m_atr(card_atr(device.options().card)) {}

  void run(const std::atomic<bool>& stopping) {
    // recv blocks for at most one receive timeout: the whole idle timeout when there is one (the
    // thread sleeps until data, the timeout or the owner's shutdown(), instead of waking every
    // slice), else a short slice so that `stopping` is seen (vpcd mode, stopped by a signal flag).
    set_recv_timeout(m_idle.count() > 0 ? m_idle : kStopSlice);
    // A client that sends commands and never reads the answers holds the thread one idle timeout at most.
    if (m_idle.count() > 0) {
      const timeval tv = to_timeval(m_idle);
      ::setsockopt(m_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    std::uint8_t buf[16384];
    while (!stopping && frame_time_left()) {
      const ssize_t n = ::recv(m_fd, buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (m_idle.count() == 0) continue;
        log_line(m_who, m_frame_started ? "frame not complete within the idle timeout, connection closed"
                                        : "idle connection closed");
        return;
      }
      if (n <= 0 || !receive(buf, static_cast<std::size_t>(n))) return;
    }
  }

 private:
  // A frame once begun must be complete within one idle timeout, however slowly its bytes come:
  // otherwise a byte every idle timeout minus one holds a connection and its thread for ever.
  bool frame_time_left() {
    if (m_idle.count() == 0) return true;
    if (!m_frame_started) return set_recv_timeout(m_idle);
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*m_frame_started + m_idle -
                                                                            std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      log_line(m_who, "frame not complete within the idle timeout, connection closed");
      return false;
    }
    return set_recv_timeout(left);
  }

  // Only a change of a millisecond or more costs a setsockopt.
  bool set_recv_timeout(std::chrono::milliseconds t) {
    if (t == m_recv_timeout) return true;
    const timeval tv = to_timeval(t);
    ::setsockopt(m_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    m_recv_timeout = t;
    return true;
  }

  bool receive(const std::uint8_t* data, std::size_t n) {
    const std::size_t drop_after = m_device.options().faults.drop_after_bytes;
    // Fault injection: the link breaks once this connection has carried drop_after bytes in.
    if (drop_after && m_received + n >= drop_after) {
      log_line(m_who, "injected connection drop after " + std::to_string(drop_after) + " bytes");
      return false;
    }
    m_received += n;
    // The bytes are counted before they are buffered, so the budget is never exceeded.
    if (!m_share.resize(m_share.held() + n)) return over_budget();
    m_decoder.feed(data, n);
    bool completed = false;
    while (auto payload = m_decoder.next()) {
      completed = true;
      if (!handle(*payload)) return false;
    }
    if (m_decoder.buffered() == 0) {
      m_frame_started.reset();
      // A drained decoder keeps its buffer's allocation, up to a whole frame, which the budget
      // (counting buffered bytes) no longer sees: a fresh one holds nothing.
      m_decoder = core::FrameDecoder(m_max_frame);
    } else if (completed || !m_frame_started)
      m_frame_started = std::chrono::steady_clock::now();
    // What stays held after the commands ran: a partial frame and gathered command data.
    if (!m_share.resize(m_decoder.buffered() + m_session.held_bytes())) return over_budget();
    return true;
  }

  bool handle(const core::SecureBytes& payload) {
    if (payload.size() == 1) {
      const std::uint8_t ctl = payload[0];
      if (ctl == core::vpcd::get_atr) {
        // A mute card: pcscd's power-on is a power on then a get ATR; closing the link there makes
        // the power-on fail while presence checks (a get ATR alone) still see a card.
        if (m_device.options().card.mute && m_last_control == core::vpcd::power_on) {
          log_line(m_who, "mute card: no ATR after power on, link closed");
          return false;
        }
        m_last_control = ctl;
        return send_frame(m_fd, m_atr.data(), m_atr.size());
      }
      if (ctl == core::vpcd::power_off || ctl == core::vpcd::power_on || ctl == core::vpcd::reset) {
        m_last_control = ctl;
        m_session.reset();
        return true;
      }
      log_line(m_who, "unknown vpcd control byte, connection closed");
      return false;
    }
    m_last_control = 0;
    core::SecureBytes response;
    try {
      response = m_session.process(payload.data(), payload.size());
    } catch (const core::Error& e) {
      if (e.code() != error::PowerCut) throw;
      m_device.power_restored();
      return false;
    }
    return send_frame(m_fd, response.data(), response.size());
  }

  bool over_budget() {
    g_budget_log.note(m_who, "memory budget of " + std::to_string(m_budget->limit()) +
                                 " bytes for all connections spent: connection closed");
    return false;
  }

  Device& m_device;
  const int m_fd;
  const std::chrono::milliseconds m_idle;
  const std::string m_who;
  Session m_session;
  const std::size_t m_max_frame;
  core::FrameDecoder m_decoder;
  BudgetShare m_share;
  MemoryBudget* m_budget;
  std::size_t m_received = 0;
  std::chrono::milliseconds m_recv_timeout{-1};
  std::optional<std::chrono::steady_clock::time_point> m_frame_started;  // first byte of a partial frame
  const core::Bytes m_atr;
  std::uint8_t m_last_control = 0;  // the vpcd control byte just before, 0 after an APDU
};

}  // namespace


bool MemoryBudget::take(std::size_t n) noexcept {
  std::size_t cur = m_held.load();
  do {
    if (cur > m_limit || n > m_limit - cur) {
      ++m_refusals;
      return false;
    }
  } while (!m_held.compare_exchange_weak(cur, cur + n));
  const std::size_t now = cur + n;
  std::size_t peak = m_peak.load();
  while (now > peak && !m_peak.compare_exchange_weak(peak, now)) {
  }
  return true;
}

void serve_stream(Device& device, int fd, std::chrono::milliseconds idle_timeout, std::size_t max_frame,
                  const std::atomic<bool>& stopping, MemoryBudget* budget) {
  const std::string who = device.chip().chip_id().str();
  try {
    Connection(device, fd, idle_timeout, max_frame, budget).run(stopping);
  } catch (const core::Error& e) {
    log_line(who, "connection closed, error " + std::to_string(e.numeric()) + ": " + e.what());
  } catch (const std::exception& e) {
    log_line(who, std::string("connection closed: ") + e.what());
  }
}

struct Server::Slot {
  std::unique_ptr<Device> device;
  std::string who;  // the chip ID, for log lines
  int listen_fd = -1;
  int port = 0;
  std::mutex mutex;
  std::condition_variable idle;
  std::set<int> connections;
};

Server::Server(const std::vector<fs::path>& device_dirs, ServerOptions options)
    : m_options(std::move(options)), m_budget(m_options.memory_budget) {
  // One acceptor thread waits on every listening socket through epoll (a fleet has thousands of
  // ports; a thread or a poll() scan per port costs CPU on every wake-up), plus an eventfd for stop().
  int next_port = m_options.base_port;
  try {
    m_epoll_fd = ::epoll_create1(EPOLL_CLOEXEC);
    m_wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    epoll_event wake{};
    wake.events = EPOLLIN;
    wake.data.ptr = nullptr;
    if (m_epoll_fd < 0 || m_wake_fd < 0 || ::epoll_ctl(m_epoll_fd, EPOLL_CTL_ADD, m_wake_fd, &wake) != 0)
      throw core::IoError(core::ErrorCode::Network, std::string("epoll setup failed: ") + std::strerror(errno));
    for (const auto& dir : device_dirs) {
      auto slot = std::make_unique<Slot>();
      slot->device = std::make_unique<Device>(Chip::load(dir), m_options.device);
      slot->who = slot->device->chip().chip_id().str();
      // Non-blocking, so that the acceptor drains each ready listener until EAGAIN and never blocks in accept.
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
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
      if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, kBacklog) != 0 ||
          ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
        const std::string reason = std::strerror(errno);
        ::close(fd);
        throw core::IoError(core::ErrorCode::Network,
                            "cannot listen on " + m_options.host + ":" + std::to_string(next_port) + ": " + reason);
      }
      slot->listen_fd = fd;
      slot->port = ntohs(a.sin_port);
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = slot.get();
      if (::epoll_ctl(m_epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        const std::string reason = std::strerror(errno);
        ::close(fd);
        throw core::IoError(core::ErrorCode::Network, "epoll_ctl failed: " + reason);
      }
      if (next_port) ++next_port;
      m_slots.push_back(std::move(slot));
    }
    apply_fd_limit();
  } catch (...) {
    close_fds();
    throw;
  }
}

void Server::apply_fd_limit() {
  const std::size_t limit = open_files_limit();
  const std::size_t in_use = open_descriptors();
  const std::size_t fits = fd_connection_cap(limit, in_use, m_slots.size());
  if (fits == 0)
    throw core::ConfigError(core::ErrorCode::Config, "open-file limit " + std::to_string(limit) + " leaves no " +
                                                         "descriptor for a connection next to " +
                                                         std::to_string(in_use) + " open ones");
  const std::size_t configured = m_options.max_connections;
  m_options.max_connections = std::min(configured, fits);
  log_line("server", "connection cap " + std::to_string(m_options.max_connections) + " (configured " +
                         std::to_string(configured) + "; open-file limit " +
                         (limit == SIZE_MAX ? std::string("unlimited") : std::to_string(limit)) + " fits " +
                         std::to_string(fits) + " next to " + std::to_string(in_use) + " open descriptors, " +
                         std::to_string(m_slots.size()) + " listeners among them, and those kept for flash files)");
}

std::size_t raise_open_files_limit() noexcept {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0) return 0;
  if (r.rlim_cur != r.rlim_max) {
    rlimit want = r;
    want.rlim_cur = r.rlim_max;
    // An unlimited hard limit is refused for RLIMIT_NOFILE (the kernel caps it at fs.nr_open):
    // the soft limit then stays where it is.
    if (::setrlimit(RLIMIT_NOFILE, &want) == 0) r = want;
  }
  return r.rlim_cur == RLIM_INFINITY ? SIZE_MAX : static_cast<std::size_t>(r.rlim_cur);
}

Server::~Server() { stop(); }

void Server::close_fds() noexcept {
  for (auto& s : m_slots) {
    if (s->listen_fd >= 0) ::close(s->listen_fd);
    s->listen_fd = -1;
  }
  if (m_wake_fd >= 0) ::close(m_wake_fd);
  if (m_epoll_fd >= 0) ::close(m_epoll_fd);
  m_wake_fd = m_epoll_fd = -1;
}

void Server::start() {
  m_acceptor = std::thread([this] { accept_loop(); });
}

void Server::accept_loop() {
  epoll_event events[64];
  // Wakes at least once per worker idle period to join the workers that exited.
  const int reap_ms = static_cast<int>(std::max<std::int64_t>(m_options.worker_idle.count(), 100));
  while (!m_stopping) {
    const int n = ::epoll_wait(m_epoll_fd, events, 64, reap_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    reap_workers();
    bool out_of_fds = false;
    for (int i = 0; i < n && !out_of_fds && !m_stopping; ++i) {
      if (!events[i].data.ptr) continue;  // the stop() wake-up; the loop condition sees m_stopping
      accept_ready(*static_cast<Slot*>(events[i].data.ptr), out_of_fds);
    }
    if (out_of_fds) pause_accepting();
  }
}

void Server::accept_ready(Slot& slot, bool& out_of_fds) {
  for (;;) {
    const int fd = ::accept4(slot.listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      if (err == EINTR || err == ECONNABORTED) continue;
      if (out_of_descriptors(err)) {
        // The connection stays in the backlog and the listener stays readable: retrying at once
        // would spin (level-triggered epoll). pause_accepting() backs off instead.
        ++m_fd_exhausted;
        if (!m_in_fd_burst)
          log_line(slot.who, std::string("cannot accept: ") + std::strerror(err) + "; accepting paused, retried every " +
                                 std::to_string(m_options.fd_backoff.count()) + " ms");
        m_in_fd_burst = true;
        out_of_fds = true;
      }
      return;  // EAGAIN: drained; anything else is the peer's
    }
    if (m_in_fd_burst) {
      log_line(slot.who, "accepting again (" + std::to_string(m_fd_exhausted.load()) +
                             " accepts failed for want of descriptors so far)");
      m_in_fd_burst = false;
    }
    if (admit(slot, fd)) hand_to_worker(slot, fd);
  }
}

void Server::pause_accepting() {
  // Sleeps on the eventfd alone: stop() still ends the pause at once.
  pollfd p{m_wake_fd, POLLIN, 0};
  [[maybe_unused]] const int r = ::poll(&p, 1, static_cast<int>(m_options.fd_backoff.count()));
}

bool Server::admit(Slot& slot, int fd) {
  std::string refused;
  {
    std::lock_guard<std::mutex> lock(slot.mutex);
    if (m_connections >= m_options.max_connections)
      refused = std::to_string(m_connections.load()) + " connections open, the limit of the process";
    else if (slot.connections.size() >= m_options.max_connections_per_device)
      refused = std::to_string(slot.connections.size()) + " connections open to this device, its limit";
    if (refused.empty()) {
      slot.connections.insert(fd);
      ++m_connections;
    }
  }
  if (!refused.empty()) {
    ++m_refused;
    ::close(fd);
    g_refusal_log.note(slot.who, "connection refused and closed: " + refused);
    return false;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return true;
}

void Server::hand_to_worker(Slot& slot, int fd) {
  std::unique_lock<std::mutex> lock(m_pool_mutex);
  m_jobs.emplace_back(&slot, fd);
  // Each queued connection has a worker of its own that is free or starting: a connection never
  // waits for another one to end. The connection caps bound how many there are.
  if (m_jobs.size() > m_free_workers) {
    try {
      start_worker();
    } catch (const std::system_error& e) {
      m_jobs.pop_back();
      lock.unlock();
      ++m_refused;
      g_refusal_log.note(slot.who, std::string("no thread for a new connection, closed: ") + e.what());
      std::lock_guard<std::mutex> slot_lock(slot.mutex);
      slot.connections.erase(fd);
      --m_connections;
      ::close(fd);
      slot.idle.notify_all();
      return;
    }
  }
  m_pool_wake.notify_one();
}

void Server::start_worker() {
  std::thread t([this] { worker_loop(); });
  const auto id = t.get_id();
  m_workers.emplace(id, std::move(t));
  ++m_free_workers;
}

void Server::worker_loop() {
  // Workers stay for the next connection instead of ending with theirs (a clone, a stack mapping
  // and an exit per device personalized), but only idle_workers of them for longer than
  // worker_idle: after a burst the process shrinks back to its pool.
  std::unique_lock<std::mutex> lock(m_pool_mutex);
  for (;;) {
    const bool woken =
        m_pool_wake.wait_for(lock, m_options.worker_idle, [&] { return !m_jobs.empty() || m_pool_closing; });
    if (!woken) {
      if (m_free_workers > m_options.idle_workers) break;
      continue;
    }
    if (m_jobs.empty()) break;  // closing
    const auto [slot, fd] = m_jobs.front();
    m_jobs.pop_front();
    --m_free_workers;
    lock.unlock();
    serve_connection(*slot, fd);
    lock.lock();
    ++m_free_workers;
  }
  --m_free_workers;
  m_finished.push_back(std::this_thread::get_id());
}

void Server::reap_workers() {
  std::vector<std::thread> done;
  {
    std::lock_guard<std::mutex> lock(m_pool_mutex);
    for (const auto& id : m_finished) {
      auto it = m_workers.find(id);
      if (it == m_workers.end()) continue;
      done.push_back(std::move(it->second));
      m_workers.erase(it);
    }
    m_finished.clear();
  }
  // They have returned from worker_loop: each join only collects the thread's stack.
  for (auto& t : done) t.join();
}

void Server::serve_connection(Slot& slot, int fd) {
  serve_stream(*slot.device, fd, m_options.idle_timeout, m_options.max_frame, m_stopping, &m_budget);
  std::lock_guard<std::mutex> lock(slot.mutex);
  slot.connections.erase(fd);
  --m_connections;
  ::close(fd);
  slot.idle.notify_all();
}

void Server::stop() noexcept {
  m_stopping = true;
  if (m_wake_fd >= 0) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t w = ::write(m_wake_fd, &one, sizeof one);
  }
  if (m_acceptor.joinable()) m_acceptor.join();
  for (auto& s : m_slots) {
    std::unique_lock<std::mutex> lock(s->mutex);
    // A connection thread blocks in recv until data or its idle timeout: shutdown() wakes it now.
    for (int fd : s->connections) ::shutdown(fd, SHUT_RDWR);
    s->idle.wait(lock, [&] { return s->connections.empty(); });
  }
  std::unordered_map<std::thread::id, std::thread> workers;
  {
    std::lock_guard<std::mutex> lock(m_pool_mutex);
    m_pool_closing = true;
    workers.swap(m_workers);
    m_finished.clear();
  }
  m_pool_wake.notify_all();
  for (auto& w : workers)
    if (w.second.joinable()) w.second.join();
  close_fds();
}

void Server::wait() {
  while (!m_stopping) std::this_thread::sleep_for(std::chrono::milliseconds(200));
}

ServerStats Server::stats() const {
  ServerStats s;
  s.accept_fd_exhausted = m_fd_exhausted;
  s.refused_connections = m_refused;
  s.budget_closed = m_budget.refusals();
  s.connections = m_connections;
  s.held_bytes = m_budget.held();
  s.peak_held_bytes = m_budget.peak();
  std::lock_guard<std::mutex> lock(m_pool_mutex);
  s.workers = m_workers.size() - m_finished.size();
  return s;
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
