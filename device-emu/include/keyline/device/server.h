// The APDU server: vpcd frames over TCP (DESIGN section 6). Listen mode serves one device per port
// (a fleet of N devices takes ports BASE..BASE+N-1 in one process); vpcd mode connects out to
// pcscd's vpcd driver so that PC/SC tools reach the device.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "keyline/device/applet.h"

namespace keyline::device {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int base_port = 0;  // 0 = any free port per device (tests read the ports back)
  std::chrono::milliseconds idle_timeout{30000};
  std::size_t max_frame = 65535 + 16;
  DeviceOptions device;
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

 private:
  struct Slot;
  void accept_loop();
  void hand_to_worker(Slot& slot, int fd);
  void worker_loop();
  void serve_connection(Slot& slot, int fd);
  void close_fds() noexcept;

  ServerOptions m_options;
  std::vector<std::unique_ptr<Slot>> m_slots;
  std::atomic<bool> m_stopping{false};
  int m_epoll_fd = -1;  // every listening socket and m_wake_fd
  int m_wake_fd = -1;   // eventfd that stop() writes to wake the acceptor
  std::thread m_acceptor;
  // Connection threads, kept for the next connection (one per connection at a time, as before).
  std::mutex m_pool_mutex;
  std::condition_variable m_pool_wake;
  std::deque<std::pair<Slot*, int>> m_jobs;  // accepted connections not yet taken by a worker
  std::size_t m_free_workers = 0;            // workers waiting for a connection or starting
  bool m_pool_closing = false;
  std::vector<std::thread> m_workers;
};

// Serves one connection of vpcd frames until it closes, times out, breaks the frame rules or the
// injected faults drop it. Used by the server and by vpcd mode. Returns on every path, never throws.
// `stopping` is looked at whenever the thread wakes: with no idle timeout at least every 200 ms;
// with one, the owner wakes a waiting connection by shutting its socket down (Server::stop does).
void serve_stream(Device& device, int fd, std::chrono::milliseconds idle_timeout, std::size_t max_frame,
                  const std::atomic<bool>& stopping);

// vpcd mode: connects to host:port (retrying while it is not there yet, up to `retry_for`) and
// serves that link until it closes or stop is set; reconnects while not stopping.
void serve_vpcd(Device& device, const std::string& host, int port, const std::atomic<bool>& stopping,
                std::chrono::milliseconds retry_for = std::chrono::milliseconds(30000));

}  // namespace keyline::device
