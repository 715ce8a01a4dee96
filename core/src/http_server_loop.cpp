// One I/O loop of core::http::Server: epoll (level-triggered) over the shared listening socket,
// an eventfd for replies from the workers, and every connection it accepted, each non-blocking,
// each under exactly one deadline at a time (handshake, head, body, write, keep-alive idle).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <list>
#include <optional>
#include <set>

#include "http_server_engine.h"
#include "http_server_parse.h"
#include "keyline/core/error.h"
#include "keyline/core/http.h"

namespace keyline::core::http::detail {
namespace {

constexpr std::uint64_t kListenId = 0;
constexpr std::uint64_t kWakeId = 1;
constexpr std::size_t kChunk = 16 * 1024;  // one TLS record's plaintext: SSL_pending stays 0 after a read
constexpr auto kAcceptPause = std::chrono::milliseconds(100);
constexpr auto kLinger = std::chrono::milliseconds(1000);

enum class Phase { Handshake, Head, Body, Handler, Write, Linger };
enum class Io { Done, Blocked, Closed };

struct Conn {
  std::uint64_t id = 0;
  int fd = -1;
  SSL* ssl = nullptr;
  std::string peer;
  Phase phase = Phase::Head;
  bool ssl_wants_write = false;  // the last SSL call returned WANT_WRITE
  std::uint32_t events = 0;      // what epoll watches now
  bool registered = false;       // in the epoll set
  Clock::time_point deadline{};
  bool has_deadline = false;
  bool idle = false;  // between requests, nothing of the next one received
  std::list<std::uint64_t>::iterator idle_it;
  bool fresh = false;  // accepted, no request head complete yet (TLS handshake included)
  std::list<std::uint64_t>::iterator fresh_it;
  ClientBytes client;  // its client's share of the budget (null: a trusted proxy)
  std::string in;           // a head, and what follows it until it is parsed
  std::size_t scanned = 0;  // bytes of `in` searched for the end of the head without finding it
  std::string body;         // the current request's body, reserved to its Content-Length
  std::string out;
  std::size_t out_done = 0;
  bool keep_alive = false;
  HeadResult head;  // the current request's head while its body arrives
  std::vector<std::uint8_t> peer_certificate;
  Charge charge;  // in, body, out and the head being completed, against the server's budget
};

// The heap a string holds (none while it fits in the string itself).
std::size_t heap_bytes(const std::string& s) { return s.capacity() > std::string().capacity() ? s.capacity() : 0; }

// A buffer that once held a large head or pipelined burst gives that memory back: a keep-alive
// connection would otherwise keep its largest request's capacity for as long as it lives.
void release_capacity(std::string& s) {
  constexpr std::size_t kKeep = 1024;  // a small head's worth; one read alone makes it 16 KiB
  if (s.empty()) {
    std::string().swap(s);  // an idle connection holds nothing
  } else if (s.capacity() > kKeep && s.capacity() > 2 * s.size()) std::string(s.data(), s.size()).swap(s);
}

}  // namespace

class Loop {
 public:
  Loop(Engine& engine, int index);
  ~Loop();
  void start() {
    m_thread = std::thread([this] { run(); });
    name_thread(m_thread, m_engine.options().name, "-io" + std::to_string(m_index));
  }
  void post(Completion&& c);
  void stop_accepting() { wake(); }
  void quit_and_join();
  std::size_t idle_count() const { return m_idle_count.load(); }
  std::size_t fresh_count() const { return m_fresh_count.load(); }

 private:
  void run();
  void wake();
  int next_timeout() const;
  void expire_deadlines();
  void on_timeout(Conn& c);
  void drain_completions();
  template <typename F>
  void guarded(std::uint64_t id, F&& f);
  void update_listener();
  void accept_ready();
  void admit(int fd, const std::string& peer);
  void refuse(int fd, const std::string& peer, Admission why);
  bool shed(bool ask_others);
  bool close_oldest(std::list<std::uint64_t>& list, const char* detail);
  std::optional<Reply> admit_head(Conn& c, const HeadResult& head);
  bool refuse_head(Conn& c, Reply reply, const HeadResult& head);
  bool timeout_reply(Conn& c);
  void on_event(std::uint64_t id, std::uint32_t ev);
  bool drive(Conn& c);
  bool handshake(Conn& c);
  bool read_ready(Conn& c);
  bool advance(Conn& c);
  bool take_head(Conn& c);
  bool continue_if_expected(Conn& c);
  bool dispatch(Conn& c);
  bool malformed(Conn& c, const Refusal& why);
  bool over_budget(Conn& c);
  void account(Conn& c);
  bool start_write(Conn& c, std::string bytes, bool keep_alive);
  bool write_ready(Conn& c);
  bool after_reply(Conn& c);
  void begin_linger(Conn& c);
  bool linger_ready(Conn& c);
  Io read_some(Conn& c, char* buf, std::size_t cap, std::size_t& n);
  Io write_some(Conn& c, const char* buf, std::size_t len, std::size_t& n);
  void set_deadline(Conn& c, std::chrono::milliseconds after);
  void clear_deadline(Conn& c);
  void set_idle(Conn& c, bool idle);
  void set_fresh(Conn& c, bool fresh);
  void watch(Conn& c);
  void close_conn(Conn& c);
  void report(Event::Kind kind, const Conn& c, int status, std::string detail);

  Engine& m_engine;
  int m_index;
  int m_epoll = -1;
  int m_wake = -1;
  std::thread m_thread;
  std::atomic<bool> m_quit{false};
  bool m_listening = false;
  Clock::time_point m_accept_paused_until{};
  std::uint64_t m_next_id = 2;
  std::unordered_map<std::uint64_t, std::unique_ptr<Conn>> m_conns;
  std::set<std::pair<Clock::time_point, std::uint64_t>> m_deadlines;
  std::list<std::uint64_t> m_idle;  // oldest first: every idle connection waits the same keep_alive_idle
  std::atomic<std::size_t> m_idle_count{0};
  std::list<std::uint64_t> m_fresh;  // oldest first: accepted, no complete request head yet
  std::atomic<std::size_t> m_fresh_count{0};
  std::mutex m_mutex;
  std::vector<Completion> m_completions;
};

Loop::Loop(Engine& engine, int index) : m_engine(engine), m_index(index) {
  m_epoll = ::epoll_create1(EPOLL_CLOEXEC);
  m_wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (m_epoll < 0 || m_wake < 0) throw IoError(ErrorCode::Io, std::string("epoll/eventfd: ") + std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeId;
  ::epoll_ctl(m_epoll, EPOLL_CTL_ADD, m_wake, &ev);
}

Loop::~Loop() {
  if (m_thread.joinable()) quit_and_join();
  while (!m_conns.empty()) close_conn(*m_conns.begin()->second);
  ::close(m_wake);
  ::close(m_epoll);
}

void Loop::wake() {
  const std::uint64_t one = 1;
  [[maybe_unused]] const auto n = ::write(m_wake, &one, sizeof one);
}

void Loop::post(Completion&& c) {
  {
    std::lock_guard lock(m_mutex);
    m_completions.push_back(std::move(c));
  }
  wake();
}

void Loop::quit_and_join() {
  m_quit = true;
  wake();
  if (m_thread.joinable()) m_thread.join();
}

void Loop::run() {
  // SIGPIPE from a write to a socket the client closed is thread-directed: blocked here, the write
  // returns EPIPE instead (SSL_write has no MSG_NOSIGNAL), and no client can kill the process.
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
  epoll_event events[256];
  for (;;) {
    update_listener();
    const int n = ::epoll_wait(m_epoll, events, 256, next_timeout());
    for (int i = 0; i < n; ++i) {
      if (events[i].data.u64 == kWakeId) {
        std::uint64_t v;
        [[maybe_unused]] const auto r = ::read(m_wake, &v, sizeof v);
      } else if (events[i].data.u64 == kListenId) {
        if (m_listening) guarded(0, [&] { accept_ready(); });
      } else {
        guarded(events[i].data.u64, [&] { on_event(events[i].data.u64, events[i].events); });
      }
    }
    drain_completions();
    if (m_quit) return;
    expire_deadlines();
  }
}

// Listens unless stopping or paused at the descriptor limit. EPOLLEXCLUSIVE: one loop is woken
// per new connection, not all of them.
void Loop::update_listener() {
  const bool want = !m_engine.stopping && Clock::now() >= m_accept_paused_until;
  if (want == m_listening) return;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.u64 = kListenId;
  ::epoll_ctl(m_epoll, want ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, m_engine.listen_fd, &ev);
  m_listening = want;
}

int Loop::next_timeout() const {
  auto until = Clock::now() + std::chrono::seconds(1);
  if (!m_deadlines.empty()) until = std::min(until, m_deadlines.begin()->first);
  if (!m_listening && !m_engine.stopping) until = std::min(until, m_accept_paused_until);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count() + 1;
  return ms < 0 ? 0 : static_cast<int>(ms);
}

void Loop::expire_deadlines() {
  const auto now = Clock::now();
  while (!m_deadlines.empty() && m_deadlines.begin()->first <= now) {
    const auto id = m_deadlines.begin()->second;
    m_deadlines.erase(m_deadlines.begin());
    const auto it = m_conns.find(id);
    if (it == m_conns.end()) continue;
    it->second->has_deadline = false;
    on_timeout(*it->second);
  }
}

void Loop::on_timeout(Conn& c) {
  switch (c.phase) {
    case Phase::Handshake: report(Event::Kind::HandshakeTimeout, c, 0, "TLS handshake not done in time"); break;
    case Phase::Head:
      // An idle keep-alive connection simply ends; a started (or never started) head is a slow client.
      if (!c.idle) {
        const auto bytes = c.in.size();
        const int status = timeout_reply(c) ? 408 : 0;
        report(Event::Kind::HeadTimeout, c, status, "request head not complete in time (" + std::to_string(bytes) + " bytes)");
        if (status) return;
      }
      break;
    case Phase::Body: {
      const int status = timeout_reply(c) ? 408 : 0;
      report(Event::Kind::BodyTimeout, c, status, "request body not complete in time");
      if (status) return;
      break;
    }
    case Phase::Write: report(Event::Kind::WriteTimeout, c, 0, "reply not taken in time"); break;
    case Phase::Handler:
    case Phase::Linger: break;
  }
  close_conn(c);
}

// An exception (out of memory) while serving one connection closes that one, not the process.
template <typename F>
void Loop::guarded(std::uint64_t id, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    log_line(true, m_engine.options().name, "connection-dropped", e.what());
    const auto it = m_conns.find(id);
    if (it != m_conns.end()) close_conn(*it->second);
  }
}

void Loop::drain_completions() {
  std::vector<Completion> done;
  {
    std::lock_guard lock(m_mutex);
    done.swap(m_completions);
  }
  for (auto& d : done) {
    if (d.shed_idle) {
      shed(false);
      continue;
    }
    const auto it = m_conns.find(d.conn);
    if (it == m_conns.end() || it->second->phase != Phase::Handler) continue;  // the client left meanwhile
    guarded(d.conn, [&] { start_write(*it->second, std::move(d.bytes), d.keep_alive && !m_quit); });
  }
}

namespace {

std::string peer_text(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, buf, sizeof buf);
    return buf;
  }
  const auto& a6 = reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr;
  if (IN6_IS_ADDR_V4MAPPED(&a6)) {  // a v4 client on a dual-stack socket counts as its v4 address
    inet_ntop(AF_INET, reinterpret_cast<const std::uint8_t*>(&a6) + 12, buf, sizeof buf);
    return buf;
  }
  inet_ntop(AF_INET6, &a6, buf, sizeof buf);
  return buf;
}

}  // namespace

void Loop::accept_ready() {
  for (int i = 0; i < 64; ++i) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    const int fd = ::accept4(m_engine.listen_fd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      admit(fd, peer_text(ss));
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
      // Level-triggered, the pending connection would wake us at once, forever: stop listening for
      // a moment (closing connections frees descriptors meanwhile).
      ++m_engine.accept_paused;
      m_accept_paused_until = Clock::now() + kAcceptPause;
      log_line(true, m_engine.options().name, "accept-paused", std::string("100 ms: ") + std::strerror(errno));
    }
    return;
  }
}

void Loop::admit(int fd, const std::string& peer) {
  auto verdict = m_engine.admit(peer, false);
  if (verdict == Admission::TotalCap && shed(true)) verdict = m_engine.admit(peer, true);
  if (verdict != Admission::Admitted) {
    refuse(fd, peer, verdict);
    return;
  }
  ++m_engine.accepted;
  auto c = std::make_unique<Conn>();
  c->id = m_next_id++;
  c->fd = fd;
  c->peer = peer;
  c->client = m_engine.client_bytes(peer);
  c->charge = Charge(m_engine.budget, c->client);
  auto& conn = *c;
  m_conns.emplace(conn.id, std::move(c));
  set_fresh(conn, true);
  if (m_engine.tls()) {
    conn.ssl = SSL_new(m_engine.tls());
    if (!conn.ssl || SSL_set_fd(conn.ssl, fd) != 1) {
      ERR_clear_error();
      close_conn(conn);
      return;
    }
    SSL_set_accept_state(conn.ssl);
    conn.phase = Phase::Handshake;
    set_deadline(conn, m_engine.limits().handshake_timeout);
  } else {
    conn.phase = Phase::Head;
    set_deadline(conn, m_engine.limits().head_timeout);
  }
  watch(conn);
}

// Over a cap. Plain HTTP gets a 503 problem document; TLS can only be closed, since nothing can be
// said before a handshake, and finishing one would spend the CPU the cap protects.
void Loop::refuse(int fd, const std::string& peer, Admission why) {
  const char* detail = why == Admission::PeerCap ? "too many connections from this address" : "too many connections";
  int status = 0;
  if (!m_engine.tls()) {
    char sink[4096];
    [[maybe_unused]] const auto drained = ::recv(fd, sink, sizeof sink, MSG_DONTWAIT);  // a request already here would turn close into a reset
    Reply r = problem_reply(Refusal{503, "connection-limit", "Too many connections", detail});
    r.headers.emplace_back("Retry-After", "1");
    const auto bytes = serialize_reply(r, false);
    [[maybe_unused]] const auto sent = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::shutdown(fd, SHUT_WR);
    status = 503;
  }
  ::close(fd);
  m_engine.report(Event{Event::Kind::Refused, status, peer, detail});
}

// Closes this loop's oldest idle keep-alive connection, or asks another loop that has one (which
// then only looks at its own, so two loops never pass the request back and forth). With none idle
// anywhere, the same for the oldest connection that has not finished its TLS handshake or first
// request head: silent connections must not hold the total cap against clients that talk (a real
// client's handshake takes milliseconds, so the oldest unfinished one is the silent one).
bool Loop::shed(bool ask_others) {
  if (close_oldest(m_idle, "idle keep-alive connection closed to make room")) return true;
  for (auto& other : m_engine.loops) {
    if (!ask_others) break;
    if (other.get() != this && other->idle_count() > 0) {
      other->post(Completion{0, {}, false, true});
      return true;
    }
  }
  if (close_oldest(m_fresh, "connection without a complete request head closed to make room")) return true;
  for (auto& other : m_engine.loops) {
    if (!ask_others) break;
    if (other.get() != this && other->fresh_count() > 0) {
      other->post(Completion{0, {}, false, true});
      return true;
    }
  }
  return false;
}

bool Loop::close_oldest(std::list<std::uint64_t>& list, const char* detail) {
  if (list.empty()) return false;
  const auto it = m_conns.find(list.front());
  if (it == m_conns.end()) return false;
  report(Event::Kind::IdleClosed, *it->second, 0, detail);
  close_conn(*it->second);
  return true;
}

void Loop::on_event(std::uint64_t id, std::uint32_t ev) {
  const auto it = m_conns.find(id);
  if (it == m_conns.end()) return;
  Conn& c = *it->second;
  if ((ev & (EPOLLERR | EPOLLHUP)) && c.phase != Phase::Write) {
    close_conn(c);  // the client is gone; a reply still being computed has nobody to go to
    return;
  }
  drive(c);
}

bool Loop::drive(Conn& c) {
  switch (c.phase) {
    case Phase::Handshake: return handshake(c);
    case Phase::Head:
    case Phase::Body: return read_ready(c);
    case Phase::Write: return write_ready(c);
    case Phase::Linger: return linger_ready(c);
    case Phase::Handler: return true;
  }
  return true;
}

bool Loop::handshake(Conn& c) {
  ERR_clear_error();
  const int r = SSL_do_handshake(c.ssl);
  if (r == 1) {
    if (X509* cert = SSL_get1_peer_certificate(c.ssl)) {
      const int len = i2d_X509(cert, nullptr);
      if (len > 0) {
        c.peer_certificate.resize(static_cast<std::size_t>(len));
        auto* p = c.peer_certificate.data();
        i2d_X509(cert, &p);
      }
      X509_free(cert);
    }
    c.phase = Phase::Head;
    set_deadline(c, m_engine.limits().head_timeout);
    return read_ready(c);
  }
  const int e = SSL_get_error(c.ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    c.ssl_wants_write = e == SSL_ERROR_WANT_WRITE;
    watch(c);
    return true;
  }
  if (e == SSL_ERROR_SSL) {
    char buf[256];
    ERR_error_string_n(ERR_peek_last_error(), buf, sizeof buf);
    report(Event::Kind::HandshakeFailed, c, 0, buf);
  }
  ERR_clear_error();
  close_conn(c);
  return false;
}

// What an SSL_read or SSL_write result means for the loop; a renegotiation-free TLS record layer
// may still want the other direction (SSL_ERROR_WANT_WRITE on a read), which the loop waits for.
Io ssl_outcome(Conn& c, int r, std::size_t& n) {
  if (r > 0) {
    n = static_cast<std::size_t>(r);
    return Io::Done;
  }
  const int e = SSL_get_error(c.ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    c.ssl_wants_write = e == SSL_ERROR_WANT_WRITE;
    return Io::Blocked;
  }
  ERR_clear_error();
  return Io::Closed;
}

Io Loop::read_some(Conn& c, char* buf, std::size_t cap, std::size_t& n) {
  c.ssl_wants_write = false;
  if (!c.ssl) {
    const auto r = ::recv(c.fd, buf, cap, 0);
    if (r > 0) {
      n = static_cast<std::size_t>(r);
      return Io::Done;
    }
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return Io::Blocked;
    return Io::Closed;
  }
  ERR_clear_error();
  return ssl_outcome(c, SSL_read(c.ssl, buf, static_cast<int>(cap)), n);
}

Io Loop::write_some(Conn& c, const char* buf, std::size_t len, std::size_t& n) {
  c.ssl_wants_write = true;
  if (!c.ssl) {
    const auto r = ::send(c.fd, buf, len, MSG_NOSIGNAL);
    if (r >= 0) {
      n = static_cast<std::size_t>(r);
      return Io::Done;
    }
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? Io::Blocked : Io::Closed;
  }
  ERR_clear_error();
  return ssl_outcome(c, SSL_write(c.ssl, buf, static_cast<int>(std::min<std::size_t>(len, 1 << 30))), n);
}

// Reads what is there (a few chunks at most, so one fast client cannot hold the loop) and moves
// the request on.
bool Loop::read_ready(Conn& c) {
  char buf[kChunk];
  for (int i = 0; i < 4 && (c.phase == Phase::Head || c.phase == Phase::Body); ++i) {
    std::size_t n = 0;
    const auto io = read_some(c, buf, sizeof buf, n);
    if (io == Io::Closed) {
      close_conn(c);  // the client left; nothing to answer
      return false;
    }
    if (io == Io::Blocked) break;
    if (c.idle) {  // the first byte of the next request: its head deadline starts now
      set_idle(c, false);
      set_deadline(c, m_engine.limits().head_timeout);
    }
    if (c.phase == Phase::Body) {  // the body goes to its own reserved buffer, the rest waits in `in`
      const auto take = std::min(n, c.head.content_length - c.body.size());
      c.body.append(buf, take);
      c.in.append(buf + take, n - take);
    } else {
      c.in.append(buf, n);
    }
    account(c);
    if (!advance(c)) return false;
  }
  watch(c);
  return true;
}

void Loop::account(Conn& c) {
  const std::size_t head = c.phase == Phase::Body ? c.head.head_bytes : 0;  // the parsed fields
  c.charge.set(heap_bytes(c.in) + heap_bytes(c.body) + heap_bytes(c.out) + head);
}

// Parses what is buffered: a head, then its body, then hands the request to a worker.
bool Loop::advance(Conn& c) {
  if (c.phase == Phase::Head) {
    if (const auto skip = leading_empty_lines(c.in)) {
      c.in.erase(0, skip);
      c.scanned = 0;
    }
    if (c.in.empty()) return true;
    if (head_end(c.in, c.scanned) == std::string::npos && c.in.size() <= m_engine.limits().max_head_bytes) {
      c.scanned = c.in.size();
      return true;
    }
    c.scanned = 0;
    const auto& l = m_engine.limits();
    auto head = parse_head(c.in, l.max_head_bytes, l.max_body_bytes, l.max_header_fields);
    if (head.state == HeadState::Incomplete) return true;
    if (head.state == HeadState::Refused) return malformed(c, head.refusal);
    set_fresh(c, false);
    // The owner's verdict on the head alone (who may send this body), before anything of it is counted.
    if (auto refusal = admit_head(c, head)) return refuse_head(c, std::move(*refusal), head);
    // The whole body is counted before any of it is read, so slow bodies cannot add up unseen; one
    // client may hold only its share, so one address cannot spend what the others need.
    if (!c.charge.try_grow(head.content_length + head.head_bytes, c.client ? m_engine.client_buffer_cap() : 0))
      return over_budget(c);
    c.in.erase(0, head.head_bytes);
    c.head = std::move(head);
    c.phase = Phase::Body;
    c.body.reserve(c.head.content_length);
    const auto take = std::min(c.in.size(), c.head.content_length);
    c.body.append(c.in, 0, take);
    c.in.erase(0, take);
    release_capacity(c.in);
    account(c);
    set_deadline(c, m_engine.limits().body_timeout);
    if (!continue_if_expected(c)) return false;
  }
  if (c.phase == Phase::Body && c.body.size() >= c.head.content_length) return dispatch(c);
  return true;
}

// RFC 9110 section 10.1.1: a client that sent "Expect: 100-continue" waits for a 100 before its
// body (curl does so for bodies over 1 KiB). The interim reply is sent only whole, on a connection
// whose send buffer is empty, so it never interleaves with a partial write.
bool Loop::continue_if_expected(Conn& c) {
  const auto* expect = c.head.request.header("expect");
  if (!expect || c.head.content_length == 0 || c.body.size() >= c.head.content_length) return true;
  std::string value = *expect;
  for (auto& ch : value) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (value != "100-continue") return true;
  static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
  std::size_t n = 0;
  if (write_some(c, kContinue.data(), kContinue.size(), n) == Io::Done && n == kContinue.size()) {
    c.ssl_wants_write = false;
    return true;
  }
  close_conn(c);
  return false;
}

bool Loop::dispatch(Conn& c) {
  Task task;
  task.loop = this;
  task.conn = c.id;
  task.keep_alive = c.head.keep_alive;
  task.received = Clock::now();
  task.request = std::move(c.head.request);
  auto& req = task.request;
  req.body = std::move(c.body);
  std::string().swap(c.body);
  // The request's bytes go with it to the queue and the worker (freed when the worker is done).
  task.charge = Charge(m_engine.budget, c.client);
  task.charge.set(heap_bytes(req.body) + c.head.head_bytes);
  release_capacity(c.in);
  req.peer_address = c.peer;
  req.client_address = client_address(req, m_engine.options().trusted_proxies);
  req.secure = c.ssl != nullptr;
  req.peer_certificate_der = c.peer_certificate;
  c.phase = Phase::Handler;
  account(c);
  clear_deadline(c);
  watch(c);
  if (m_engine.pool->push(std::move(task))) return true;
  Reply r = problem_reply(Refusal{503, "busy", "Server busy", "too many requests waiting; try again shortly"});
  r.headers.emplace_back("Retry-After", "1");
  report(Event::Kind::Refused, c, 503, "worker queue full");
  return start_write(c, serialize_reply(r, false), false);
}

std::optional<Reply> Loop::admit_head(Conn& c, const HeadResult& head) {
  const auto& hook = m_engine.options().admit;
  if (!hook) return std::nullopt;
  Request req = head.request;
  req.peer_address = c.peer;
  req.client_address = client_address(req, m_engine.options().trusted_proxies);
  req.secure = c.ssl != nullptr;
  req.peer_certificate_der = c.peer_certificate;
  try {
    return hook(req);
  } catch (const std::exception& e) {
    Reply r = problem_reply(Refusal{500, "internal", "Internal server error", "the request could not be handled"});
    r.log_detail = std::string("admit hook threw: ") + e.what();
    return r;
  }
}

// The admit hook's refusal: the reply goes out with Connection: close and the body is never read
// (the linger drops what the client still sends, unbuffered). The access sink sees it as a reply.
bool Loop::refuse_head(Conn& c, Reply reply, const HeadResult& head) {
  reply.close = true;
  reply.head_only = head.request.method == "HEAD";
  auto bytes = serialize_reply(reply, false);
  if (const auto& access = m_engine.access()) {
    Request req = head.request;
    req.peer_address = c.peer;
    req.client_address = client_address(req, m_engine.options().trusted_proxies);
    req.secure = c.ssl != nullptr;
    try {
      access(req, reply, std::chrono::microseconds(0));
    } catch (...) {
      // As for the workers: the access log never stops the server.
    }
  }
  c.in.clear();
  release_capacity(c.in);
  return start_write(c, std::move(bytes), false);
}

// RFC 9110 section 15.5.9: a head or body over its deadline on an established connection gets a
// 408 before the close, if the socket takes it at once (never another deadline's wait for a client
// that is not reading). True when sent; the connection then lingers.
bool Loop::timeout_reply(Conn& c) {
  std::string().swap(c.body);
  std::string().swap(c.in);
  account(c);
  const auto bytes = serialize_reply(
      problem_reply(Refusal{408, "request-timeout", "Request timeout", "the request did not arrive in time"}), false);
  std::size_t n = 0;
  if (write_some(c, bytes.data(), bytes.size(), n) != Io::Done || n != bytes.size()) return false;
  clear_deadline(c);
  begin_linger(c);
  return true;
}

bool Loop::malformed(Conn& c, const Refusal& why) {
  report(Event::Kind::Malformed, c, why.status, why.detail);
  return start_write(c, serialize_reply(problem_reply(why), false), false);
}

// A body that does not fit ServerLimits::max_buffered_bytes: refused before any of it is read (the
// close then drops what the client still sends, unbuffered).
bool Loop::over_budget(Conn& c) {
  Reply r = problem_reply(Refusal{503, "busy", "Server busy", "too many request bytes in flight; try again shortly"});
  r.headers.emplace_back("Retry-After", "1");
  report(Event::Kind::Refused, c, 503, "buffer budget spent (" + std::to_string(m_engine.budget.used()) + " bytes)");
  return start_write(c, serialize_reply(r, false), false);
}

bool Loop::start_write(Conn& c, std::string bytes, bool keep_alive) {
  c.out = std::move(bytes);
  c.out_done = 0;
  c.keep_alive = keep_alive;
  c.phase = Phase::Write;
  account(c);
  set_deadline(c, m_engine.limits().write_timeout);
  return write_ready(c);
}

bool Loop::write_ready(Conn& c) {
  while (c.out_done < c.out.size()) {
    std::size_t n = 0;
    const auto io = write_some(c, c.out.data() + c.out_done, c.out.size() - c.out_done, n);
    if (io == Io::Closed) {
      close_conn(c);
      return false;
    }
    if (io == Io::Blocked) {
      watch(c);
      return true;
    }
    c.out_done += n;
  }
  std::string().swap(c.out);
  account(c);
  return after_reply(c);
}

// Keep-alive: wait for the next request (a pipelined one may already be buffered); else close.
bool Loop::after_reply(Conn& c) {
  if (!c.keep_alive) {
    begin_linger(c);
    return true;
  }
  c.phase = Phase::Head;
  c.head = HeadResult{};
  if (const auto skip = leading_empty_lines(c.in)) c.in.erase(0, skip);
  release_capacity(c.in);
  account(c);
  if (c.in.empty()) {
    set_idle(c, true);
    set_deadline(c, m_engine.limits().keep_alive_idle);
  } else {
    set_deadline(c, m_engine.limits().head_timeout);
    if (!advance(c)) return false;
  }
  if (c.phase == Phase::Head || c.phase == Phase::Body) return read_ready(c);
  return true;
}

// After the last reply: our side shut, then what the client still sends is read and dropped for a
// moment, so that closing with unread bytes does not reset the connection and lose the reply.
void Loop::begin_linger(Conn& c) {
  if (c.ssl) {
    ERR_clear_error();
    SSL_shutdown(c.ssl);
    ERR_clear_error();
  }
  ::shutdown(c.fd, SHUT_WR);
  c.phase = Phase::Linger;
  c.ssl_wants_write = false;
  set_deadline(c, std::min<std::chrono::milliseconds>(kLinger, m_engine.limits().write_timeout));
  watch(c);
}

bool Loop::linger_ready(Conn& c) {
  char buf[kChunk];
  for (int i = 0; i < 4; ++i) {
    const auto r = ::recv(c.fd, buf, sizeof buf, 0);
    if (r > 0) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return true;
    close_conn(c);
    return false;
  }
  return true;
}

void Loop::set_deadline(Conn& c, std::chrono::milliseconds after) {
  clear_deadline(c);
  c.deadline = Clock::now() + after;
  c.has_deadline = true;
  m_deadlines.emplace(c.deadline, c.id);
}

void Loop::clear_deadline(Conn& c) {
  if (c.has_deadline) m_deadlines.erase({c.deadline, c.id});
  c.has_deadline = false;
}

void Loop::set_idle(Conn& c, bool idle) {
  if (idle == c.idle) return;
  if (idle) {
    c.idle_it = m_idle.insert(m_idle.end(), c.id);
    ++m_idle_count;
  } else {
    m_idle.erase(c.idle_it);
    --m_idle_count;
  }
  c.idle = idle;
}

// What epoll watches follows the phase (and which way TLS wants to go next). Nothing while a
// handler runs: a pipelined request waits in the socket, and epoll still reports HUP and ERR.
void Loop::watch(Conn& c) {
  std::uint32_t want = 0;
  switch (c.phase) {
    case Phase::Handshake:
    case Phase::Head:
    case Phase::Body:
    case Phase::Write: want = c.ssl_wants_write ? EPOLLOUT : EPOLLIN; break;
    case Phase::Linger: want = EPOLLIN; break;
    case Phase::Handler: want = 0; break;
  }
  if (c.registered && want == c.events) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  ::epoll_ctl(m_epoll, c.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c.fd, &ev);
  c.registered = true;
  c.events = want;
}

void Loop::set_fresh(Conn& c, bool fresh) {
  if (fresh == c.fresh) return;
  if (fresh) {
    c.fresh_it = m_fresh.insert(m_fresh.end(), c.id);
    ++m_fresh_count;
  } else {
    m_fresh.erase(c.fresh_it);
    --m_fresh_count;
  }
  c.fresh = fresh;
}

void Loop::close_conn(Conn& c) {
  clear_deadline(c);
  set_idle(c, false);
  set_fresh(c, false);
  if (c.ssl) SSL_free(c.ssl);
  ::close(c.fd);  // also leaves the epoll set
  m_engine.release(c.peer);
  m_conns.erase(c.id);
}

void Loop::report(Event::Kind kind, const Conn& c, int status, std::string detail) {
  m_engine.report(Event{kind, status, c.peer, std::move(detail)});
}

LoopPtr make_loop(Engine& engine, int index) { return LoopPtr(new Loop(engine, index)); }
void LoopDeleter::operator()(Loop* loop) const { delete loop; }
void start_loop(Loop& loop) { loop.start(); }
void post(Loop& loop, Completion&& completion) { loop.post(std::move(completion)); }
void stop_accepting(Loop& loop) { loop.stop_accepting(); }
void quit_and_join(Loop& loop) { loop.quit_and_join(); }
std::size_t idle_count(const Loop& loop) { return loop.idle_count(); }

}  // namespace keyline::core::http::detail
