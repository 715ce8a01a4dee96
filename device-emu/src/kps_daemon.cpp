// `keyline-device kps agent`: the device's KPS daemon (docs/kps.md "Device commands"). It long-polls
// its notices, serves transfer requests (source) and receives keys (target), and acks only what it
// handled. The KPS being down, restarting, answering 5xx, or an answer that is not authentic are all
// the same to it: log, back off (250 ms doubling to --max-backoff), reconnect; nothing is acked on
// a failure, so nothing is lost. SIGTERM/SIGINT end it with exit 0: between notices it returns
// normally; while it only waits in a long poll (no request of its own in flight that changes state)
// it exits at once.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <thread>

#include "keyline/device/kps_agent.h"
#include "kps_session.h"

namespace keyline::device {
namespace {

using Clock = std::chrono::steady_clock;

// Stop requests from a dedicated sigwait thread (no work in a signal handler).
class StopSignal {
 public:
  StopSignal() {
    sigemptyset(&m_set);
    sigaddset(&m_set, SIGTERM);
    sigaddset(&m_set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &m_set, nullptr);
    std::thread([this] { wait_for_signal(); }).detach();
  }
  bool stopping() const { return m_stop.load(); }
  // Sleeps up to `d`, less when a stop arrives.
  void sleep(std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> lock(m_mutex);
    m_cv.wait_for(lock, d, [this] { return m_stop.load(); });
  }
  // Marks the span where the agent only waits for the KPS: a stop there exits the process at once.
  void set_waiting(bool waiting) {
    std::lock_guard<std::mutex> lock(m_mutex);
    m_waiting = waiting;
  }

 private:
  void wait_for_signal() {
    int sig = 0;
    sigwait(&m_set, &sig);
    std::lock_guard<std::mutex> lock(m_mutex);
    m_stop = true;
    if (m_waiting) {
      std::cout << "agent: stopped" << std::endl;
      std::fflush(nullptr);
      ::_exit(core::exit_code::ok);
    }
    m_cv.notify_all();
  }

  sigset_t m_set{};
  std::atomic<bool> m_stop{false};
  bool m_waiting = false;
  std::mutex m_mutex;
  std::condition_variable m_cv;
};

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One poll and its notices. Returns false when a notice failed (the caller backs off before the next
// poll, which returns the same notice at once).
bool poll_once(kps::Session& s, const kps::DeviceKeys& keys, const KpsClientConfig& c, const KpsAgentOptions& o,
               StopSignal& stop) {
  const auto started = Clock::now();
  stop.set_waiting(true);
  std::vector<kps::Notice> notices;
  try {
    notices = kps::pending(s, o.wait_s);
  } catch (...) {
    stop.set_waiting(false);
    throw;
  }
  stop.set_waiting(false);
  bool ok = true;
  for (const auto& n : notices) {
    if (stop.stopping()) break;
    std::cout << "notice " << n.reason << " " << n.transfer_id << " t=" << unix_ms() << std::endl;
    try {
      const auto outcome = kps::handle(s, keys, c, n, kps::Source | kps::Target);
      if (outcome == "delivered" || outcome == "received")
        std::cout << "agent: " << outcome << " " << n.transfer_id << " t=" << unix_ms() << std::endl;
    } catch (const core::Error& e) {
      std::cerr << "agent: transfer " << n.transfer_id << " failed (" << e.numeric() << "): " << e.what() << std::endl;
      ok = false;
    }
  }
  // A KPS that does not hold the poll (v1, or wait=0) must not make the agent spin.
  if (notices.empty() && Clock::now() - started < std::chrono::milliseconds(500))
    stop.sleep(std::chrono::milliseconds(500));
  return ok;
}

}  // namespace

int kps_agent(const KpsClientConfig& c, const KpsAgentOptions& o) {
  if (o.wait_s < 0 || o.wait_s > 30) throw core::ConfigError(core::ErrorCode::Usage, "--wait is 0..30 seconds");
  StopSignal stop;
  const auto keys = kps::open_device(c.dir);
  std::unique_ptr<kps::Session> s;
  const std::chrono::milliseconds first_backoff(250);
  auto backoff = first_backoff;
  std::cout << "agent: " << keys.chip_id.str() << " polling " << c.url << std::endl;
  while (!stop.stopping()) {
    bool ok = false;
    try {
      if (!s) s = std::make_unique<kps::Session>(c, keys, o.wait_s + 15);
      ok = poll_once(*s, keys, c, o, stop);
    } catch (const core::ConfigError&) {
      throw;  // a bad --kps-key or URL does not get better by retrying
    } catch (const core::Error& e) {
      std::cerr << "agent: " << e.what() << " (" << e.numeric() << "); retry in " << backoff.count() << " ms"
                << std::endl;
      s.reset();  // a fresh connection after any failure (the KPS may have restarted)
      if (o.once) throw;
    }
    if (o.once) return ok ? core::exit_code::ok : core::exit_code::failure;  // a notice failed: say so
    if (ok) {
      backoff = first_backoff;
      continue;
    }
    stop.sleep(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(o.max_backoff_ms));
  }
  std::cout << "agent: stopped" << std::endl;
  return core::exit_code::ok;
}

int cmd_kps_agent(const KpsClientConfig& c, const KpsAgentOptions& o) { return kps_agent(c, o); }

}  // namespace keyline::device
