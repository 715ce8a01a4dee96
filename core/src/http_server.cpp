// core::http::Server: admission, the worker pool, the TLS context, binding and the public class.
// The I/O loops are in http_server_loop.cpp, the request parser in http_server_parse.cpp.
#include "keyline/core/http_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "http_server_engine.h"
#include "http_server_parse.h"
#include "keyline/core/error.h"
#include "keyline/core/http.h"
#include "keyline/core/json_log.h"

namespace keyline::core::http {

const std::string* Request::header(std::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return &value;
  }
  return nullptr;
}

std::string Request::get(std::string_view lower_name, const std::string& fallback) const {
  const auto* v = header(lower_name);
  return v ? *v : fallback;
}

void ListenerSettings::check() const {
  if (threads < 1 || io_threads < 1 || max_connections < 1 || max_per_client < 1 || max_queued < 1)
    throw ConfigError(ErrorCode::Config,
                      "--threads, --io-threads, --max-connections, --max-per-client and --max-queued must be positive");
  for (const int ms : {handshake_timeout_ms, head_timeout_ms, body_timeout_ms, write_timeout_ms, idle_timeout_ms})
    if (ms < 1) throw ConfigError(ErrorCode::Config, "timeouts are positive milliseconds");
}

ServerLimits ListenerSettings::limits(std::size_t max_body_bytes) const {
  ServerLimits l;
  l.handshake_timeout = std::chrono::milliseconds(handshake_timeout_ms);
  l.head_timeout = std::chrono::milliseconds(head_timeout_ms);
  l.body_timeout = std::chrono::milliseconds(body_timeout_ms);
  l.write_timeout = std::chrono::milliseconds(write_timeout_ms);
  l.keep_alive_idle = std::chrono::milliseconds(idle_timeout_ms);
  l.max_body_bytes = max_body_bytes;
  l.max_connections = max_connections;
  l.max_per_client = max_per_client;
  l.io_threads = io_threads;
  l.workers = threads;
  l.max_queued = max_queued;
  return l;
}

ServerOptions operations_listener(const std::string& name, const std::string& listen) {
  ServerOptions o;
  o.name = name;
  o.listen = listen;
  o.limits.io_threads = 1;
  o.limits.workers = 2;
  o.limits.max_connections = 64;
  o.limits.max_per_client = 16;
  o.limits.max_per_other_client = 4;
  o.limits.loopback_reserved = 16;
  o.limits.max_body_bytes = 0;
  o.check_host = true;
  // KEYLINE_OPS_HOSTS: names (comma-separated) the operator reaches these listeners by, beyond
  // localhost and IP literals (docs/operations.md).
  if (const char* env = std::getenv("KEYLINE_OPS_HOSTS")) {
    std::string names = env;
    for (std::size_t at = 0; at <= names.size();) {
      const auto comma = std::min(names.find(',', at), names.size());
      if (comma > at) o.allowed_hosts.push_back(names.substr(at, comma - at));
      at = comma + 1;
    }
  }
  return o;
}

std::string client_key(const std::string& peer_address) {
  if (peer_address.find(':') == std::string::npos || peer_address == "::1") return peer_address;
  in6_addr a{};
  if (inet_pton(AF_INET6, peer_address.c_str(), &a) != 1) return peer_address;
  std::memset(reinterpret_cast<std::uint8_t*>(&a) + 8, 0, 8);  // the interface identifier
  char buf[INET6_ADDRSTRLEN] = "";
  inet_ntop(AF_INET6, &a, buf, sizeof buf);
  return std::string(buf) + "/64";
}

const char* to_string(Event::Kind kind) noexcept {
  switch (kind) {
    case Event::Kind::Refused: return "refused";
    case Event::Kind::HandshakeTimeout: return "handshake-timeout";
    case Event::Kind::HandshakeFailed: return "handshake-failed";
    case Event::Kind::HeadTimeout: return "head-timeout";
    case Event::Kind::BodyTimeout: return "body-timeout";
    case Event::Kind::WriteTimeout: return "write-timeout";
    case Event::Kind::Malformed: return "malformed";
    case Event::Kind::IdleClosed: return "idle-closed";
  }
  return "unknown";
}

namespace detail {

void log_line(bool error, const std::string& listener, const char* event, const std::string& detail,
              const std::string& peer, int status) {
  log::Fields f;
  f.str("listener", listener);
  if (!peer.empty()) f.str("peer", peer);
  if (status != 0) f.num("status", status);
  f.str("detail", detail);
  const std::string line = log::format_line(std::chrono::system_clock::now(), error ? log::Level::Error : log::Level::Warn,
                                            log::program(), event, {}, {}, f) + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);  // one write: lines of several threads never interleave
}

namespace {

// Stands in for X509_verify_cert (SSL_CTX_set_cert_verify_callback(3)): no chain is built or
// checked, so a client cannot make the I/O thread verify dozens of costly signatures. The handshake
// still proves the client holds the leaf's key (CertificateVerify); the handler decides what the
// leaf is worth (docs/decisions.md, "The servers' own acceptor").
int accept_without_chain(X509_STORE_CTX*, void*) { return 1; }

// A station sends its leaf and at most one CA: 16 KiB holds that many times over, against
// OpenSSL's default of 100 KiB per Certificate message.
constexpr long kMaxCertList = 16 * 1024;
// TLS 1.2 and 1.3 sessions resume from tickets only (the state travels, encrypted, with the
// client), so the server keeps nothing per client; a ticket is honoured this long.
constexpr long kSessionTimeoutSeconds = 300;

std::string openssl_error() {
  char buf[256] = "unknown";
  if (const auto e = ERR_get_error()) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

}  // namespace

SSL_CTX* make_tls_context(const ServerOptions& o) {
  if (o.tls_cert_file.empty()) return nullptr;
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) throw ConfigError(ErrorCode::Config, "TLS context: " + openssl_error());
  const auto fail = [&](const std::string& what) {
    const auto detail = openssl_error();
    SSL_CTX_free(ctx);
    throw ConfigError(ErrorCode::Config, what + ": " + detail);
  };
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // A TLS 1.2 renegotiation is a full handshake's CPU on demand, for nothing these servers need.
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  // Partial writes let a reply go out as the socket takes it; RELEASE_BUFFERS keeps an idle
  // connection at a few hundred bytes.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_use_certificate_chain_file(ctx, o.tls_cert_file.c_str()) != 1) fail("TLS certificate " + o.tls_cert_file);
  if (SSL_CTX_use_PrivateKey_file(ctx, o.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1) fail("TLS key " + o.tls_key_file);
  if (SSL_CTX_check_private_key(ctx) != 1) fail("TLS key does not match the certificate");
  SSL_CTX_set_max_cert_list(ctx, kMaxCertList);
  // OpenSSL's server cache would hold 20480 sessions for 2 hours, each with the client's whole
  // chain: memory a client can fill at will.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_timeout(ctx, kSessionTimeoutSeconds);
  // Resumption with client certificates needs a session id context (SSL_CTX_set_session_id_context(3)).
  const auto sid = o.name.substr(0, SSL_MAX_SSL_SESSION_ID_LENGTH);
  SSL_CTX_set_session_id_context(ctx, reinterpret_cast<const unsigned char*>(sid.data()), static_cast<unsigned>(sid.size()));
  if (!o.client_ca_file.empty()) {
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(o.client_ca_file.c_str());
    if (!names) fail("client CA file " + o.client_ca_file);
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_cert_verify_callback(ctx, accept_without_chain, nullptr);
  }
  return ctx;
}

bool Budget::try_take(std::size_t n) {
  auto used = m_used.load();
  do {
    if (n > m_cap || used > m_cap - n) return false;
  } while (!m_used.compare_exchange_weak(used, used + n));
  return true;
}

Charge& Charge::operator=(Charge&& other) noexcept {
  if (this != &other) {
    set(0);
    m_budget = other.m_budget;
    m_client = std::move(other.m_client);
    m_bytes = other.m_bytes;
    other.m_bytes = 0;
  }
  return *this;
}

void Charge::set(std::size_t bytes) {
  if (!m_budget) return;
  if (bytes > m_bytes) {
    m_budget->take(bytes - m_bytes);
    if (m_client) *m_client += bytes - m_bytes;
  }
  if (bytes < m_bytes) {
    m_budget->give(m_bytes - bytes);
    if (m_client) *m_client -= m_bytes - bytes;
  }
  m_bytes = bytes;
}

bool Charge::try_grow(std::size_t more, std::size_t client_cap) {
  if (!m_budget) return false;
  if (m_client && client_cap) {
    // Taken first and given back when over: two loops growing the same client at once cannot
    // both slip under the share.
    const auto before = m_client->fetch_add(more);
    if (more > client_cap || before > client_cap - more) {
      *m_client -= more;
      return false;
    }
  }
  if (!m_budget->try_take(more)) {
    if (m_client) *m_client -= more;
    return false;
  }
  m_bytes += more;
  return true;
}

Engine::Engine(ServerOptions options, Handler handler, EventSink events, AccessSink access)
    : m_options(std::move(options)), m_handler(std::move(handler)), m_events(std::move(events)),
      m_access(std::move(access)) {
  auto& l = m_options.limits;
  if (l.io_threads < 1 || l.workers < 1 || l.max_connections < 1 || l.max_per_client < 1) {
    throw ConfigError(ErrorCode::Config, "server limits: threads and connection caps must be at least 1");
  }
  budget.set_cap(l.max_buffered_bytes);
  for (auto& proxy : m_options.trusted_proxies) {
    auto canonical = canonical_address(proxy);
    if (canonical.empty()) throw ConfigError(ErrorCode::Config, "trusted proxy is not an IP address: " + proxy);
    proxy = std::move(canonical);
  }
  m_tls = make_tls_context(m_options);
}

Engine::~Engine() {
  if (m_tls) SSL_CTX_free(m_tls);
}

bool Engine::trusted_proxy(const std::string& peer) const {
  const auto& proxies = m_options.trusted_proxies;
  return std::find(proxies.begin(), proxies.end(), peer) != proxies.end();
}

Admission Engine::admit(const std::string& peer, bool over_total) {
  const auto key = client_key(peer);
  std::lock_guard lock(m_peers_mutex);
  auto it = m_peers.find(key);
  // A trusted proxy carries many clients: only the total cap applies to it.
  const bool proxy = trusted_proxy(peer);
  const auto& l = limits();
  const bool loopback = peer == "127.0.0.1" || peer == "::1" || peer == "::ffff:127.0.0.1";
  const std::size_t per_client = !loopback && l.max_per_other_client ? l.max_per_other_client : l.max_per_client;
  if (!proxy && it != m_peers.end() && it->second.connections >= per_client) return Admission::PeerCap;
  const std::size_t total = loopback ? l.max_connections
                                     : l.max_connections - std::min(l.loopback_reserved, l.max_connections - 1);
  if (open.load() >= total + (over_total ? 1 : 0)) return Admission::TotalCap;
  ++m_peers[key].connections;
  ++open;
  return Admission::Admitted;
}

void Engine::release(const std::string& peer) {
  const auto key = client_key(peer);
  std::lock_guard lock(m_peers_mutex);
  const auto it = m_peers.find(key);
  if (it == m_peers.end()) return;
  // A request of the client still queued keeps its count alive through its own Charge.
  if (--it->second.connections == 0) m_peers.erase(it);
  --open;
}

ClientBytes Engine::client_bytes(const std::string& peer) {
  if (trusted_proxy(peer)) return {};
  std::lock_guard lock(m_peers_mutex);
  const auto it = m_peers.find(client_key(peer));
  return it == m_peers.end() ? ClientBytes{} : it->second.bytes;
}

std::size_t Engine::client_buffer_cap() const {
  const auto& l = limits();
  return l.max_buffered_per_client ? l.max_buffered_per_client : l.max_buffered_bytes / 16;
}

void Engine::report(const Event& e) {
  switch (e.kind) {
    case Event::Kind::Refused: ++refused; break;
    case Event::Kind::HandshakeTimeout:
    case Event::Kind::HeadTimeout:
    case Event::Kind::BodyTimeout:
    case Event::Kind::WriteTimeout: ++timed_out; break;
    case Event::Kind::Malformed: ++malformed; break;
    case Event::Kind::IdleClosed: ++idle_closed; break;
    case Event::Kind::HandshakeFailed: break;
  }
  if (m_events) {
    try {
      m_events(e);
    } catch (...) {
      // A failing log sink must not take the I/O loop with it.
    }
    return;
  }
  detail::log_line(false, m_options.name, to_string(e.kind), e.detail, e.peer, e.status);
}

void name_thread(std::thread& thread, std::string name, const std::string& suffix) {
  // At most 15 characters (pthread_setname_np(3)), shown by top -H and in /proc/<pid>/task/*/comm:
  // the suffix is kept whole, the common "keyline-" prefix goes first.
  if (name.rfind("keyline-", 0) == 0) name.erase(0, 8);
  name = name.substr(0, suffix.size() < 15 ? 15 - suffix.size() : 0) + suffix;
  pthread_setname_np(thread.native_handle(), name.substr(0, 15).c_str());
}

void WorkerPool::start(int threads) {
  for (int i = 0; i < threads; ++i) {
    m_threads.emplace_back([this] { run(); });
    name_thread(m_threads.back(), m_engine.options().name, "-w" + std::to_string(i));
  }
}

bool WorkerPool::push(Task&& task) {
  {
    std::lock_guard lock(m_mutex);
    if (m_done || m_queue.size() >= m_max) return false;
    m_queue.push_back(std::move(task));
  }
  m_cv.notify_one();
  return true;
}

std::size_t WorkerPool::queued() const {
  std::lock_guard lock(m_mutex);
  return m_queue.size();
}

void WorkerPool::finish() {
  {
    std::lock_guard lock(m_mutex);
    m_done = true;
  }
  m_cv.notify_all();
  for (auto& t : m_threads) t.join();
  m_threads.clear();
}

void WorkerPool::run() {
  for (;;) {
    Task task;
    {
      std::unique_lock lock(m_mutex);
      m_cv.wait(lock, [&] { return m_done || !m_queue.empty(); });
      if (m_queue.empty()) return;
      task = std::move(m_queue.front());
      m_queue.pop_front();
    }
    serve(task);
  }
}

void WorkerPool::serve(Task& task) {
  Reply reply;
  const auto& o = m_engine.options();
  try {
    if (o.check_host && !host_allowed(task.request.header("host"), m_engine.bound_port, o.allowed_hosts)) {
      // RFC 9110 section 15.5.20: this listener is not the origin the Host names (DNS rebinding).
      reply = problem_reply(Refusal{421, "misdirected", "Misdirected request", "the Host header does not name this listener"});
      reply.log_detail = "Host " + task.request.get("host", "(none)") + " refused";
    } else {
      reply = m_engine.handler()(task.request);
    }
  } catch (const std::exception& e) {
    reply = problem_reply(Refusal{500, "internal", "Internal server error", "the request could not be handled"});
    reply.close = false;
    reply.log_detail = std::string("handler threw: ") + e.what();
  } catch (...) {
    reply = problem_reply(Refusal{500, "internal", "Internal server error", "the request could not be handled"});
    reply.close = false;
    reply.log_detail = "handler threw";
  }
  reply.head_only = task.request.method == "HEAD";
  bool keep = task.keep_alive && !reply.close && !m_engine.stopping.load();
  std::string bytes;
  try {
    bytes = serialize_reply(reply, keep);
  } catch (const std::exception&) {
    keep = false;  // out of memory for the reply: the connection is closed, never left waiting
  }
  post(*task.loop, Completion{task.conn, std::move(bytes), keep, false});
  if (m_engine.access()) {
    try {
      m_engine.access()(task.request, reply,
                        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - task.received));
    } catch (...) {
      // As for the event sink: the access log never stops the server.
    }
  }
}

namespace {

// "ip:port" or "[v6]:port".
std::pair<std::string, std::string> split_listen(const std::string& listen) {
  std::string host, port;
  if (!listen.empty() && listen.front() == '[') {
    const auto close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      throw ConfigError(ErrorCode::Config, "listen address: " + listen);
    }
    host = listen.substr(1, close - 1);
    port = listen.substr(close + 2);
  } else {
    const auto colon = listen.rfind(':');
    if (colon == std::string::npos) throw ConfigError(ErrorCode::Config, "listen address: " + listen);
    host = listen.substr(0, colon);
    port = listen.substr(colon + 1);
  }
  if (host.empty() || port.empty()) throw ConfigError(ErrorCode::Config, "listen address: " + listen);
  return {host, port};
}

addrinfo* resolve_listen(const std::string& listen) {
  const auto [host, port] = split_listen(listen);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || !res) {
    throw ConfigError(ErrorCode::Config, "listen address: " + listen);
  }
  return res;
}

void bind_listener(Engine& e) {
  addrinfo* res = resolve_listen(e.options().listen);
  const int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  const int one = 1;
  if (fd < 0 || ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      ::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 1024) != 0) {
    const int err = errno;
    freeaddrinfo(res);
    if (fd >= 0) ::close(fd);
    throw IoError(ErrorCode::Network, "cannot listen on " + e.options().listen + ": " + std::strerror(err));
  }
  freeaddrinfo(res);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  char host[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    e.bound_port = ntohs(a->sin6_port);
    e.bound = "[" + std::string(host) + "]:" + std::to_string(e.bound_port);
  } else {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    e.bound_port = ntohs(a->sin_port);
    e.bound = std::string(host) + ":" + std::to_string(e.bound_port);
  }
  e.listen_fd = fd;
}

}  // namespace
}  // namespace detail

struct Server::Impl {
  detail::Engine engine;
  std::mutex lifecycle;
  bool started = false;
  bool stopped = false;
  Impl(ServerOptions o, Handler h, EventSink ev, AccessSink ac)
      : engine(std::move(o), std::move(h), std::move(ev), std::move(ac)) {}
};

Server::Server(ServerOptions options, Handler handler, EventSink events, AccessSink access)
    : m_impl(std::make_unique<Impl>(std::move(options), std::move(handler), std::move(events), std::move(access))) {
  detail::split_listen(m_impl->engine.options().listen);  // a bad address is a ConfigError now, not at start
}

Server::~Server() { stop(); }

void Server::start() {
  std::lock_guard lock(m_impl->lifecycle);
  if (m_impl->started) return;
  auto& e = m_impl->engine;
  detail::bind_listener(e);
  e.pool = std::make_unique<detail::WorkerPool>(e, e.limits().max_queued);
  e.pool->start(e.limits().workers);
  for (int i = 0; i < e.limits().io_threads; ++i) e.loops.push_back(detail::make_loop(e, i));
  for (auto& loop : e.loops) detail::start_loop(*loop);
  m_impl->started = true;
}

void Server::stop() {
  std::lock_guard lock(m_impl->lifecycle);
  if (!m_impl->started || m_impl->stopped) return;
  m_impl->stopped = true;
  auto& e = m_impl->engine;
  e.stopping = true;
  for (auto& loop : e.loops) detail::stop_accepting(*loop);
  e.pool->finish();  // running and queued handlers finish; their replies are posted
  for (auto& loop : e.loops) detail::quit_and_join(*loop);
  e.loops.clear();
  ::close(e.listen_fd);
  e.listen_fd = -1;
}

std::string Server::address() const { return m_impl->engine.bound; }
std::uint16_t Server::port() const { return m_impl->engine.bound_port; }

ServerStats Server::stats() const {
  const auto& e = m_impl->engine;
  ServerStats s;
  s.open_connections = e.open.load();
  s.queued_requests = e.pool ? e.pool->queued() : 0;
  s.accepted = e.accepted.load();
  s.refused = e.refused.load();
  s.timed_out = e.timed_out.load();
  s.malformed = e.malformed.load();
  s.idle_closed = e.idle_closed.load();
  s.accept_paused = e.accept_paused.load();
  s.buffered_bytes = e.budget.used();
  return s;
}

}  // namespace keyline::core::http
