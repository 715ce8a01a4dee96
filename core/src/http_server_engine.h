// The parts of core::http::Server that its I/O loops share (private to core): options, the TLS
// context, connection admission (caps), counters and the worker pool.
#pragma once

#include <openssl/ssl.h>

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

#include "keyline/core/http_server.h"

namespace keyline::core::http::detail {

using Clock = std::chrono::steady_clock;
class Loop;
struct LoopDeleter {
  void operator()(Loop* loop) const;  // in http_server_loop.cpp, where Loop is complete
};
using LoopPtr = std::unique_ptr<Loop, LoopDeleter>;

// Bytes buffered for requests and replies, against ServerLimits::max_buffered_bytes; shared by
// the I/O loops and the workers.
class Budget {
 public:
  void set_cap(std::size_t cap) { m_cap = cap; }
  bool try_take(std::size_t n);  // false, taking nothing, when n does not fit what is left
  void take(std::size_t n) { m_used += n; }
  void give(std::size_t n) { m_used -= n; }
  std::size_t used() const { return m_used.load(); }

 private:
  std::size_t m_cap = 0;
  std::atomic<std::size_t> m_used{0};
};

// Bytes one client (client_key) holds across its connections and queued requests.
using ClientBytes = std::shared_ptr<std::atomic<std::size_t>>;

// What one connection or one queued request holds of the Budget (and of its client's share, when
// it has one); given back when it ends.
class Charge {
 public:
  Charge() = default;
  explicit Charge(Budget& budget, ClientBytes client = {}) : m_budget(&budget), m_client(std::move(client)) {}
  Charge(Charge&& other) noexcept { *this = std::move(other); }
  Charge& operator=(Charge&& other) noexcept;
  Charge(const Charge&) = delete;
  Charge& operator=(const Charge&) = delete;
  ~Charge() { set(0); }
  void set(std::size_t bytes);         // takes or gives back the difference, whatever is left
  // False, changing nothing, when `more` does not fit the budget, or the client's share
  // (client_cap; 0 = none) of it.
  bool try_grow(std::size_t more, std::size_t client_cap = 0);

 private:
  Budget* m_budget = nullptr;
  ClientBytes m_client;
  std::size_t m_bytes = 0;
};

// A complete request on its way to a handler.
struct Task {
  Loop* loop = nullptr;
  std::uint64_t conn = 0;
  bool keep_alive = false;
  Clock::time_point received;
  Request request;
  Charge charge;  // the request's bytes, until the worker is done with it
};

class Engine;

// A fixed set of handler threads over a bounded queue.
class WorkerPool {
 public:
  WorkerPool(Engine& engine, std::size_t max_queued) : m_engine(engine), m_max(max_queued) {}
  void start(int threads);
  bool push(Task&& task);  // false when the queue is full
  void finish();           // runs what is queued, then joins
  std::size_t queued() const;

 private:
  void run();
  void serve(Task& task);
  Engine& m_engine;
  std::size_t m_max;
  mutable std::mutex m_mutex;
  std::condition_variable m_cv;
  std::deque<Task> m_queue;
  bool m_done = false;
  std::vector<std::thread> m_threads;
};

enum class Admission { Admitted, PeerCap, TotalCap };

class Engine {
 public:
  Engine(ServerOptions options, Handler handler, EventSink events, AccessSink access);
  ~Engine();

  const ServerOptions& options() const { return m_options; }
  const ServerLimits& limits() const { return m_options.limits; }
  SSL_CTX* tls() const { return m_tls; }
  const Handler& handler() const { return m_handler; }
  const AccessSink& access() const { return m_access; }

  // Counts the connection against both caps; `over_total` lets one through the total cap (an idle
  // connection is being closed to make room for it).
  Admission admit(const std::string& peer, bool over_total);
  void release(const std::string& peer);
  // The byte count of the peer's client (client_key), while it has a connection; null for a trusted
  // proxy (exempt from per-client caps).
  ClientBytes client_bytes(const std::string& peer);
  std::size_t client_buffer_cap() const;  // ServerLimits::max_buffered_per_client, its default applied
  void report(const Event& event);  // counts, then the sink (or stderr)

  Budget budget;  // before the loops and the pool: their connections and tasks give back to it
  std::atomic<bool> stopping{false};
  std::atomic<std::uint64_t> accepted{0}, accept_paused{0};
  std::atomic<std::size_t> open{0};
  std::vector<LoopPtr> loops;
  std::unique_ptr<WorkerPool> pool;
  int listen_fd = -1;
  std::string bound;
  std::uint16_t bound_port = 0;

  std::atomic<std::uint64_t> refused{0}, timed_out{0}, malformed{0}, idle_closed{0};

 private:
  ServerOptions m_options;
  Handler m_handler;
  EventSink m_events;
  AccessSink m_access;
  SSL_CTX* m_tls = nullptr;
  bool trusted_proxy(const std::string& peer) const;
  struct Client {
    std::size_t connections = 0;
    ClientBytes bytes = std::make_shared<std::atomic<std::size_t>>(0);
  };
  std::mutex m_peers_mutex;
  std::unordered_map<std::string, Client> m_peers;  // by client_key
};

// The reply a worker hands back to the loop that owns the connection.
struct Completion {
  std::uint64_t conn = 0;
  std::string bytes;
  bool keep_alive = false;
  bool shed_idle = false;  // not a reply: close this loop's oldest idle (or else unfinished) connection
};

// Starts one I/O loop's thread over the shared listening socket.
LoopPtr make_loop(Engine& engine, int index);
void start_loop(Loop& loop);
void post(Loop& loop, Completion&& completion);
void stop_accepting(Loop& loop);  // wakes the loop; it drops the listener
void quit_and_join(Loop& loop);   // flushes posted replies once, closes everything, joins
std::size_t idle_count(const Loop& loop);

// Names the calling thread <name><suffix>, shortened to 15 characters ("backupdb-ops-io0" -> "backupdb-op-io0").
void name_thread(std::thread& thread, std::string name, const std::string& suffix);

SSL_CTX* make_tls_context(const ServerOptions& options);  // nullptr for plain HTTP; ConfigError

// A line of the connection layer's own (no event sink set, a dropped connection, a paused accept) on
// stderr in every program's JSON line shape (core/json_log.h, docs/operations.md "Logs").
void log_line(bool error, const std::string& listener, const char* event, const std::string& detail,
              const std::string& peer = {}, int status = 0);

}  // namespace keyline::core::http::detail
