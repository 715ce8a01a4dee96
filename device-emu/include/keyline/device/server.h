// The APDU server: vpcd frames over TCP (docs/design.md section 6). Listen mode serves one device per port
// (a fleet of N devices takes ports BASE..BASE+N-1 in one process); vpcd mode connects out to
// pcscd's vpcd driver so that PC/SC tools reach the device.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "keyline/device/applet.h"

namespace keyline::device {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int base_port = 0;  // 0 = any free port per device (tests read the ports back)
  std::chrono::milliseconds idle_timeout{30000};
  std::size_t max_frame = 65535 + 16;
  // Limits under load (docs/protocol.md, "Device emulator limits"). A connection over a cap is
  // accepted and closed at once with a log line: the client sees the link close before any answer.
  // Every device of the process together; the server lowers it to what RLIMIT_NOFILE carries.
  std::size_t max_connections = 1024;
  std::size_t max_connections_per_device = 8;  // a line talks to a device over one connection
  // Bytes that all connections together may hold in frame buffers and gathered command data
  // (chaining, STORE DATA); the connection that would go over it is closed.
  std::size_t memory_budget = std::size_t{64} << 20;
  std::size_t idle_workers = 4;                 // connection threads kept waiting for the next connection
  std::chrono::milliseconds worker_idle{10000};  // beyond idle_workers, a thread idle this long exits
  // Out of file descriptors (EMFILE/ENFILE): the acceptor stops accepting this long, then retries.
  std::chrono::milliseconds fd_backoff{100};
  DeviceOptions device;
};

// Shared by the connections of a process: what they hold together never exceeds the limit.
class MemoryBudget {
 public:
  explicit MemoryBudget(std::size_t limit) noexcept : m_limit(limit) {}
  // Takes n bytes; false (nothing taken, the refusal counted) when that would exceed the limit.
  bool take(std::size_t n) noexcept;
  void give(std::size_t n) noexcept { m_held -= n; }
  std::size_t held() const noexcept { return m_held; }
  std::size_t peak() const noexcept { return m_peak; }
  std::uint64_t refusals() const noexcept { return m_refusals; }
  std::size_t limit() const noexcept { return m_limit; }

 private:
  const std::size_t m_limit;
  std::atomic<std::size_t> m_held{0};
  std::atomic<std::size_t> m_peak{0};
  std::atomic<std::uint64_t> m_refusals{0};
};

// What the server has been through, for logs and tests.
struct ServerStats {
  std::uint64_t accept_fd_exhausted = 0;  // accepts that failed for want of descriptors (EMFILE, ENFILE, ...)
  std::uint64_t refused_connections = 0;  // connections closed at once over a connection cap
  std::uint64_t budget_closed = 0;        // connections closed because the memory budget was spent
  std::size_t connections = 0;            // open now
  std::size_t workers = 0;                // connection threads alive now
  std::size_t held_bytes = 0;             // memory budget in use now
  std::size_t peak_held_bytes = 0;        // the most it ever held
};

class Server {
 public:
  // Loads every device and binds its port; throws IoError(Network) when a port cannot be bound.
  Server(const std::vector<fs::path>& device_dirs, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void start();          // the accept thread runs in the background
  void stop() noexcept;  // closes listeners and connections, joins threads
  void wait();           // blocks until stop() (from another thread or a signal)
  std::vector<int> ports() const;
  Device& device(std::size_t index);
  std::size_t size() const noexcept { return m_slots.size(); }
  // The connection cap in force: the configured one, lowered to what the open-file limit carries.
  std::size_t connection_cap() const noexcept { return m_options.max_connections; }
  ServerStats stats() const;

 private:
  struct Slot;
  void accept_loop();
  void accept_ready(Slot& slot, bool& out_of_fds);
  bool admit(Slot& slot, int fd);
  void pause_accepting();
  void hand_to_worker(Slot& slot, int fd);
  void start_worker();
  void worker_loop();
  void reap_workers();
  void serve_connection(Slot& slot, int fd);
  void close_fds() noexcept;
  // Lowers max_connections to what RLIMIT_NOFILE carries next to the listeners and the descriptors
  // commands need (docs/protocol.md section 8), and logs the cap; throws ConfigError when none fits.
  void apply_fd_limit();

  ServerOptions m_options;
  std::vector<std::unique_ptr<Slot>> m_slots;
  std::atomic<bool> m_stopping{false};
  int m_epoll_fd = -1;  // every listening socket and m_wake_fd
  int m_wake_fd = -1;   // eventfd that stop() writes to wake the acceptor
  std::thread m_acceptor;
  MemoryBudget m_budget;
  std::atomic<std::size_t> m_connections{0};
  std::atomic<std::uint64_t> m_fd_exhausted{0};
  std::atomic<std::uint64_t> m_refused{0};
  bool m_in_fd_burst = false;  // acceptor only: the last accept failed for want of descriptors
  // Connection threads, kept for the next connection (one per connection at a time); beyond
  // idle_workers they exit after worker_idle, and the acceptor joins them.
  mutable std::mutex m_pool_mutex;
  std::condition_variable m_pool_wake;
  std::deque<std::pair<Slot*, int>> m_jobs;  // accepted connections not yet taken by a worker
  std::size_t m_free_workers = 0;            // workers waiting for a connection or starting
  bool m_pool_closing = false;
  std::unordered_map<std::thread::id, std::thread> m_workers;
  std::vector<std::thread::id> m_finished;  // workers that returned, not yet joined
};

// Raises the soft RLIMIT_NOFILE to the hard one (a fleet needs a listener per device and a socket
// per connection; the usual soft limit of 1024 runs out first). Returns the soft limit now.
std::size_t raise_open_files_limit() noexcept;

// Serves one connection of vpcd frames until it closes, times out, breaks the frame rules, spends
// more than `budget` allows (nullptr: no budget) or the injected faults drop it. Used by the server
// and by vpcd mode. Returns on every path, never throws.
// `stopping` is looked at whenever the thread wakes: with no idle timeout at least every 200 ms;
// with one, the owner wakes a waiting connection by shutting its socket down (Server::stop does).
void serve_stream(Device& device, int fd, std::chrono::milliseconds idle_timeout, std::size_t max_frame,
                  const std::atomic<bool>& stopping, MemoryBudget* budget = nullptr);

// vpcd mode: connects to host:port (retrying while it is not there yet, up to `retry_for`) and
// serves that link until it closes or stop is set; reconnects while not stopping.
void serve_vpcd(Device& device, const std::string& host, int port, const std::atomic<bool>& stopping,
                std::chrono::milliseconds retry_for = std::chrono::milliseconds(30000));

}  // namespace keyline::device
