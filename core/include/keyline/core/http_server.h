// An event-driven HTTP/1.1 server for the public DB and the KPS (and the servers that follow).
//
// Why not Poco's HTTPServer: it holds one thread per connection from accept to close, so a few
// dozen clients that send one byte a second, or never finish a TLS handshake, take every thread
// and the server stops answering (docs/decisions.md, "The servers' own acceptor"). Here a few I/O
// threads own every connection with epoll, through the TLS handshake, the request head and the
// body, each under a deadline. Only a complete request reaches a worker thread, so a slow or silent
// client costs a descriptor and a small buffer, never a thread.
//
// Limits: a cap on connections in total and per client address (a refused connection gets a 503
// problem document where one can be sent, and is counted); idle keep-alive connections, then
// connections that have not yet finished their TLS handshake or first request head, are closed
// oldest first when the total cap is reached, before any new connection is refused. The bytes held
// for requests are capped in total and per client address (client_key: an IPv6 client is its /64). Malformed
// requests (bad Content-Length, a head too long, a bad request line) get an RFC 9457 problem
// document, a log line and a count, never silence.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keyline::core::http {

// A complete request, as a worker sees it.
struct Request {
  std::string method;                                        // "GET", "POST", ...
  std::string target;                                        // request-target as sent (path and query)
  std::string path;                                          // target up to '?'
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-case, values trimmed
  std::string body;
  std::string peer_address;    // TCP peer address (no port)
  std::string client_address;  // peer_address, or from X-Forwarded-For when the peer is a trusted proxy
  bool secure = false;         // TLS
  std::vector<std::uint8_t> peer_certificate_der;  // the TLS client certificate; empty when none

  // The first header of that (lower-case) name, or nullptr.
  const std::string* header(std::string_view lower_name) const;
  std::string get(std::string_view lower_name, const std::string& fallback = {}) const;
};

// What a handler answers. The server adds Content-Length, Date and Connection.
struct Reply {
  int status = 200;
  std::string content_type;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string log_detail;  // for the log line only, never sent
  bool close = false;      // close the connection after this reply
  bool head_only = false;  // set by the server for HEAD: headers as for GET, no body sent
};

struct ServerLimits {
  std::chrono::milliseconds handshake_timeout{5000};  // TCP accept to TLS handshake done
  std::chrono::milliseconds head_timeout{10000};      // to the end of a request head, from accept (TLS: from
                                                      // the end of the handshake) or, after a reply, from
                                                      // the next request's first byte
  std::chrono::milliseconds body_timeout{20000};      // end of the head to the end of the body
  std::chrono::milliseconds write_timeout{20000};     // a reply fully written
  std::chrono::milliseconds keep_alive_idle{15000};   // between requests on one connection
  std::size_t max_head_bytes = 16 * 1024;             // request line and headers (431 beyond)
  std::size_t max_header_fields = 100;                // header lines in one head (431 beyond)
  std::size_t max_body_bytes = 256 * 1024;            // 413 beyond
  std::size_t max_connections = 4096;                 // in total
  std::size_t max_per_client = 64;                    // per client address (peer address)
  // Operator listeners: slowloris from other loopback addresses (127.0.0.2, ...) or the network must
  // not lock the operator on 127.0.0.1 / ::1 out. 0 = off.
  std::size_t max_per_other_client = 0;  // when set, the per-address cap of peers not 127.0.0.1 / ::1
  std::size_t loopback_reserved = 0;     // of max_connections, slots only 127.0.0.1 / ::1 may take
  int io_threads = 2;                                 // epoll loops (TLS handshakes run here)
  int workers = 16;                                   // handler threads
  std::size_t max_queued = 1024;                      // complete requests waiting for a worker (503 beyond)
  // Bytes held for requests and replies across all connections: heads and bodies being read,
  // requests waiting for or in a worker, replies being written. A body that does not fit what is
  // left gets 503 (Retry-After) before any of it is read, as does a head while the budget is spent.
  std::size_t max_buffered_bytes = 64 * 1024 * 1024;
  // Of max_buffered_bytes, what one client (client_key of the peer address) may hold at head time:
  // over it, its head gets the same 503, other clients are not affected. A trusted proxy is exempt
  // (as from max_per_client). 0 = max_buffered_bytes / 16.
  std::size_t max_buffered_per_client = 0;
};

// A request head, parsed, before anything of its body is read or counted against the buffer budget:
// a reply refuses the request there (sent with Connection: close, the body never read); nullopt
// lets it go on. Runs on an I/O thread: thread-safe, and cheap (no database, no blocking). The
// Request has no body; peer_address, client_address, secure and peer_certificate_der are set.
using AdmitHook = std::function<std::optional<Reply>(const Request& head)>;

struct ServerOptions {
  std::string name = "keyline";  // for logs, thread names (<name>-io0, <name>-w0, without "keyline-") and the TLS session id context
  std::string listen;            // "127.0.0.1:8443", "0.0.0.0:0" (port 0: any free port)
  // TLS when tls_cert_file is set: the server's chain (PEM, leaf first) and its key (PEM).
  std::string tls_cert_file;
  std::string tls_key_file;
  // When set, the handshake asks for a client certificate (listing these CAs) but does not require
  // one and accepts any: the handler decides (a publish without one gets a 401 problem document).
  std::string client_ca_file;
  // Peer addresses (IPv4 or IPv6, compared as addresses, not as text: "2001:DB8::1" is "2001:db8::1";
  // anything else is a ConfigError) whose X-Forwarded-For is believed: client_address is
  // then the rightmost address in it that is not itself a trusted proxy. A trusted proxy is not
  // held to max_per_client (it carries many clients); the total cap still applies.
  std::vector<std::string> trusted_proxies;
  // Operations listeners (operations_listener sets it): a request whose Host is not an IP literal,
  // localhost or one of allowed_hosts, with the bound port or none, gets 421 (RFC 9110 section
  // 15.5.20) and never reaches the handler: a web page in a browser on the host that rebinds its own
  // name to 127.0.0.1 cannot read /metrics or the line page.
  bool check_host = false;
  std::vector<std::string> allowed_hosts;
  ServerLimits limits;
  AdmitHook admit;  // optional: refuses a request at its head (the public DB: a publish with no station certificate)
};

// The client a per-client cap counts a peer address against: the address itself, except that an
// IPv6 address (not ::1) counts as its /64 ("2001:db8:1:2::/64"): one host is given a whole /64
// and picks any address in it (RFC 4291, RFC 8981), so per-address caps would not hold it.
std::string client_key(const std::string& peer_address);

// What the server did to a connection or request on its own (no handler involved).
struct Event {
  enum class Kind {
    Refused,           // over a connection cap, or the worker queue full
    HandshakeTimeout,  // TLS handshake not done in time
    HandshakeFailed,   // TLS handshake failed
    HeadTimeout,       // request head not complete in time (slow header, or nothing sent)
    BodyTimeout,       // body not complete in time
    WriteTimeout,      // reply not taken by the client in time
    Malformed,         // a problem document was sent (status says which)
    IdleClosed,        // at the total cap, an idle keep-alive connection, or one that has not finished its
                       // TLS handshake or first request head, closed to make room (detail says which)
  };
  static constexpr std::size_t kKinds = 8;  // keep equal to the number of kinds above
  Kind kind;
  int status = 0;           // the status sent, 0 when nothing could be sent
  std::string peer;         // peer address
  std::string detail;       // for the log only
};
const char* to_string(Event::Kind kind) noexcept;

// The handler runs on the worker threads, the sinks on the I/O and worker threads, concurrently:
// all three must be thread-safe. An exception from a handler becomes a 500 problem document (its
// message goes to Reply::log_detail, not to the client); one from a sink is swallowed.
using Handler = std::function<Reply(const Request&)>;
using EventSink = std::function<void(const Event&)>;
// Called after a handler's reply was queued for writing (for access logs and metrics).
using AccessSink = std::function<void(const Request&, const Reply&, std::chrono::microseconds elapsed)>;

// Live counts, for /metrics.
struct ServerStats {
  std::size_t open_connections = 0;
  std::size_t queued_requests = 0;
  std::uint64_t accepted = 0;
  std::uint64_t refused = 0;
  std::uint64_t timed_out = 0;  // handshake, head, body and write deadlines together
  std::uint64_t malformed = 0;
  std::uint64_t idle_closed = 0;  // IdleClosed events (idle and unfinished connections)
  std::uint64_t accept_paused = 0;  // times accepting paused at the descriptor limit (EMFILE/ENFILE)
  std::size_t buffered_bytes = 0;   // counted against ServerLimits::max_buffered_bytes now
};

// The connection settings an operator gives a server (flags, environment, config file), in the units
// of those settings; the public DB's and the KPS's configs are made of these plus their own.
struct ListenerSettings {
  int threads = 16;                      // handler (worker) threads
  int io_threads = 2;                    // epoll loops (TLS handshakes run there)
  std::size_t max_connections = 4096;    // open connections in total
  std::size_t max_per_client = 64;       // open connections per peer address
  std::size_t max_queued = 1024;         // complete requests waiting for a worker (503 beyond)
  int handshake_timeout_ms = 5000;       // accept to TLS handshake done
  int head_timeout_ms = 10000;           // first byte of a request to the end of its head
  int body_timeout_ms = 20000;           // end of the head to the end of the body
  int write_timeout_ms = 20000;          // a reply taken by the client
  int idle_timeout_ms = 15000;           // keep-alive connection idle between requests

  void check() const;  // ConfigError naming the flags when a count or a timeout is not positive
  ServerLimits limits(std::size_t max_body_bytes) const;
};

// The operations listener of a server (/metrics, /healthz): plain HTTP for the operator's scraper on
// the same host, so one I/O thread, two workers, few connections and no request bodies; the Host
// header checked (check_host), with the names in KEYLINE_OPS_HOSTS (comma-separated) allowed too.
ServerOptions operations_listener(const std::string& name, const std::string& listen);

class Server {
 public:
  // Throws ConfigError for a bad listen address, a trusted proxy that is not an address or unreadable
  // TLS files, IoError when it cannot bind.
  Server(ServerOptions options, Handler handler, EventSink events = {}, AccessSink access = {});
  ~Server();  // stops
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void start();                  // binds, listens, starts the I/O and worker threads
  void stop();                   // stops accepting, lets running handlers finish, closes everything
  std::string address() const;   // the bound "ip:port" (after start)
  std::uint16_t port() const;    // the bound port (after start)
  ServerStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace keyline::core::http
