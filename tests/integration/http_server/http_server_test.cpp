// core::http::Server over real loopback sockets: each limit and each deadline, with limits short
// enough that a case takes well under a second.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <csignal>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "client.h"
#include <sys/types.h>
#include <dirent.h>
#include "keyline/core/error.h"
#include "keyline/core/http.h"
#include "keyline/core/http_server.h"
#include "tls_material.h"

using namespace keyline::core::http;
using namespace keyline::test;
using Resp = keyline::test::Response;
using namespace std::chrono_literals;
using Kind = Event::Kind;

namespace {

// A started server that records its events.
struct Served {
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<Event> events;
  std::unique_ptr<Server> server;

  explicit Served(ServerOptions o, Handler h = {}) {
    if (!h) {
      h = [](const Request& r) {
        Reply rep;
        rep.content_type = "text/plain";
        rep.body = r.method + " " + r.target + " client=" + r.client_address + " body=" + r.body;
        return rep;
      };
    }
    o.listen = "127.0.0.1:0";
    server = std::make_unique<Server>(std::move(o), std::move(h), [this](const Event& e) {
      std::lock_guard lock(mutex);
      events.push_back(e);
      cv.notify_all();
    });
    server->start();
  }
  int port() const { return server->port(); }
  // Waits for an event of that kind; returns it (kind Refused with status -1 when none came).
  Event wait(Kind kind, std::chrono::milliseconds timeout = 3000ms) {
    std::unique_lock lock(mutex);
    Event found{kind, -1, {}, {}};
    cv.wait_for(lock, timeout, [&] {
      for (const auto& e : events) {
        if (e.kind == kind) {
          found = e;
          return true;
        }
      }
      return false;
    });
    return found;
  }
  std::size_t count(Kind kind) {
    std::lock_guard lock(mutex);
    std::size_t n = 0;
    for (const auto& e : events) n += e.kind == kind ? 1 : 0;
    return n;
  }
};

ServerLimits short_limits() {
  ServerLimits l;
  l.handshake_timeout = 300ms;
  l.head_timeout = 300ms;
  l.body_timeout = 300ms;
  l.write_timeout = 300ms;
  l.keep_alive_idle = 300ms;
  l.io_threads = 1;
  l.workers = 2;
  return l;
}

ServerOptions options(ServerLimits l = short_limits()) {
  ServerOptions o;
  o.name = "test";
  o.limits = l;
  return o;
}

const std::string kGet = "GET /r HTTP/1.1\r\nHost: t\r\n\r\n";

void check_problem(const Resp& r, int status, const std::string& slug) {
  CHECK(r.status == status);
  CHECK(r.headers.at("content-type") == "application/problem+json");
  CHECK(r.headers.at("connection") == "close");
  CHECK(r.body.find("\"type\":\"https://keyline.example/problems/" + slug + "\"") != std::string::npos);
  CHECK(r.body.find("\"status\":" + std::to_string(status)) != std::string::npos);
}

// Waits for the server to close `fd`; returns how long it took (timeout when it did not).
std::chrono::milliseconds wait_closed(int fd, std::chrono::milliseconds timeout = 3000ms) {
  const auto r = read_until(fd, [](const std::string&) { return false; }, timeout);
  return r.closed ? r.elapsed : timeout;
}

}  // namespace

TEST_CASE("a GET is answered with Date, Content-Length and keep-alive; HEAD sends no body") {
  Served s(options());
  const int fd = connect_from("127.0.0.1", s.port());
  send_all(fd, kGet + "HEAD /r HTTP/1.1\r\nHost: t\r\n\r\n");
  const auto got = read_until(fd, responses(2, {false, true}), 3000ms);
  const auto rs = parse_responses(got.data, {false, true});
  REQUIRE(rs.size() == 2);
  CHECK(rs[0].status == 200);
  CHECK(rs[0].body == "GET /r client=127.0.0.1 body=");
  CHECK(rs[0].headers.count("date") == 1);
  CHECK(rs[0].headers.at("connection") == "keep-alive");
  CHECK(rs[1].headers.at("content-length") == std::to_string(std::string("HEAD /r client=127.0.0.1 body=").size()));
  CHECK(rs[1].body.empty());
  // Nothing after the HEAD reply: its body was not sent.
  const auto tail = got.data.substr(got.data.rfind("\r\n\r\n") + 4);
  CHECK(tail.empty());
  ::close(fd);
}

TEST_CASE("204 and 304 replies carry no body, whatever the handler put in it") {
  Served s(options(), [](const Request& r) {
    Reply rep;
    rep.status = r.path == "/204" ? 204 : r.path == "/304" ? 304 : 200;
    rep.body = "should not be sent";
    return rep;
  });
  const int fd = connect_from("127.0.0.1", s.port());
  send_all(fd, "GET /204 HTTP/1.1\r\nHost: t\r\n\r\nGET /304 HTTP/1.1\r\nHost: t\r\n\r\nGET /200 HTTP/1.1\r\nHost: t\r\n\r\n");
  const auto got = read_until(fd, responses(3, {true, true, false}), 3000ms);
  const auto rs = parse_responses(got.data, {true, true, false});
  REQUIRE(rs.size() == 3);
  CHECK(rs[0].status == 204);
  CHECK(rs[0].headers.count("content-length") == 0);
  CHECK(rs[1].status == 304);
  CHECK(rs[2].status == 200);
  CHECK(rs[2].body == "should not be sent");
  CHECK(got.data.find("should not be sent") == got.data.rfind("should not be sent"));  // once: the 200's
  ::close(fd);
}

TEST_CASE("pipelined requests are answered in order, bodies included") {
  Served s(options());
  const int fd = connect_from("127.0.0.1", s.port());
  send_all(fd, "GET /1 HTTP/1.1\r\nHost: t\r\n\r\nPOST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
               "GET /3 HTTP/1.1\r\nHost: t\r\n\r\n");
  const auto rs = parse_responses(read_until(fd, responses(3), 3000ms).data);
  REQUIRE(rs.size() == 3);
  CHECK(rs[0].body == "GET /1 client=127.0.0.1 body=");
  CHECK(rs[1].body == "POST /2 client=127.0.0.1 body=abc");
  CHECK(rs[2].body == "GET /3 client=127.0.0.1 body=");
  ::close(fd);
}

TEST_CASE("a head arriving a byte at a time is found wherever its end is split (CRLF; a bare LF is a prompt 400)") {
  Served s(options(ServerLimits{}));
  for (const std::string head : {"GET /s HTTP/1.1\r\nHost: t\r\nA: b\r\n\r\n", "GET /s HTTP/1.1\nHost: t\nA: b\n\n",
                                 "GET /s HTTP/1.1\r\nHost: t\n\r\n"}) {
    CAPTURE(head);
    const int fd = connect_from("127.0.0.1", s.port());
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (char ch : head) {
      send_all(fd, std::string(1, ch));
      std::this_thread::sleep_for(2ms);  // one segment, one wake-up of the server each
    }
    const auto got = read_until(fd, responses(1), 3000ms);
    const auto rs = parse_responses(got.data);
    REQUIRE(rs.size() == 1);
    if (head.find("\r\n\r\n") != std::string::npos) {
      CHECK(rs[0].body == "GET /s client=127.0.0.1 body=");
    } else {
      check_problem(rs[0], 400, "bad-line-end");  // at the end of the head, not at the 10 s deadline
      CHECK(got.elapsed < 2000ms);
    }
    ::close(fd);
  }
}

TEST_CASE("a malformed Content-Length gets a 400 problem document, an event and a count") {
  Served s(options());
  for (const char* cl : {"Content-Length: abc\r\n", "Content-Length: -1\r\n", "Content-Length: 3\r\nContent-Length: 3\r\n",
                         "Content-Length: 1 2\r\n", "Content-Length: 99999999999999999999999\r\n"}) {
    CAPTURE(cl);
    const auto r = exchange(s.port(), std::string("POST /p HTTP/1.1\r\nHost: t\r\n") + cl + "\r\nabc");
    check_problem(r, 400, "bad-content-length");
  }
  const auto e = s.wait(Kind::Malformed);
  CHECK(e.status == 400);
  CHECK(e.peer == "127.0.0.1");
  CHECK(s.server->stats().malformed == 5);
}

TEST_CASE("other malformed heads: Transfer-Encoding 411, too long 431, bad line 400, no Host 400, HTTP/2.0 505") {
  auto o = options();
  o.limits.max_head_bytes = 1024;
  Served s(o);
  check_problem(exchange(s.port(), "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 411,
                "length-required");
  check_problem(exchange(s.port(), "GET /p HTTP/1.1\r\nHost: t\r\nX: " + std::string(2000, 'a') + "\r\n\r\n"), 431,
                "head-too-large");
  // Too long without ever ending: refused as soon as it passes the limit, not at the deadline.
  check_problem(exchange(s.port(), "GET /p HTTP/1.1\r\nX: " + std::string(2000, 'a')), 431, "head-too-large");
  check_problem(exchange(s.port(), "GET /p\r\nHost: t\r\n\r\n"), 400, "bad-request-line");
  check_problem(exchange(s.port(), "GET p HTTP/1.1\r\nHost: t\r\n\r\n"), 400, "bad-request-line");
  check_problem(exchange(s.port(), "GET /p HTTP/1.1 x\r\nHost: t\r\n\r\n"), 400, "bad-request-line");
  check_problem(exchange(s.port(), "GET /p HTTP/1.1\r\n\r\n"), 400, "bad-host");
  check_problem(exchange(s.port(), "GET /p HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n"), 400, "bad-header");
  check_problem(exchange(s.port(), "GET /p HTTP/1.1\r\nHost : t\r\n\r\n"), 400, "bad-header");
  check_problem(exchange(s.port(), "GET /p HTTP/2.0\r\nHost: t\r\n\r\n"), 505, "http-version");
  CHECK(s.server->stats().malformed == 10);
  // absolute-form is accepted (RFC 9112 section 3.2.2) and reaches the handler as origin-form.
  CHECK(exchange(s.port(), "GET http://x/p?q HTTP/1.1\r\nHost: x\r\n\r\n").body == "GET /p?q client=127.0.0.1 body=");
}

TEST_CASE("a body over max_body_bytes gets 413 at once, without the body being read") {
  auto o = options();
  o.limits.max_body_bytes = 1000;
  o.limits.body_timeout = 5000ms;
  Served s(o);
  const int fd = connect_from("127.0.0.1", s.port());
  send_all(fd, "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n");
  const auto got = read_until(fd, responses(1), 3000ms);
  ::close(fd);
  const auto rs = parse_responses(got.data);
  REQUIRE(rs.size() == 1);
  check_problem(rs[0], 413, "body-too-large");
  CHECK(got.elapsed < 1000ms);  // not after the 5 s body deadline
  CHECK(s.wait(Kind::Malformed).status == 413);
}

TEST_CASE("a slow header is cut at the head deadline, counted from its first byte") {
  Served s(options());
  const int fd = connect_from("127.0.0.1", s.port());
  send_all(fd, "GET /r HTTP/1.1\r\n");
  const auto start = std::chrono::steady_clock::now();
  bool cut = false;
  for (int i = 0; i < 40 && !cut; ++i) {  // one byte every 50 ms: 2 s unless the server cuts
    std::this_thread::sleep_for(50ms);
    cut = ::send(fd, "X", 1, MSG_NOSIGNAL) != 1 || wait_closed(fd, 1ms) < 1ms;
  }
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(cut);
  CHECK(took >= 250ms);
  CHECK(took < 1500ms);
  const auto e = s.wait(Kind::HeadTimeout);
  CHECK(e.status == 408);  // RFC 9110 section 15.5.9, sent before the close
  CHECK(e.peer == "127.0.0.1");
  CHECK(s.server->stats().timed_out == 1);
  ::close(fd);
}

TEST_CASE("a silent connection is cut at the head deadline, with a 408") {
  Served s(options());
  const int fd = connect_from("127.0.0.1", s.port());
  const auto got = read_until(fd, [](const std::string&) { return false; }, 3000ms);
  CHECK(got.closed);
  CHECK(got.elapsed >= 250ms);
  CHECK(got.elapsed < 1500ms);
  const auto rs = parse_responses(got.data);
  REQUIRE(rs.size() == 1);
  check_problem(rs[0], 408, "request-timeout");
  CHECK(s.wait(Kind::HeadTimeout).peer == "127.0.0.1");
  ::close(fd);
}

TEST_CASE("a body that stops arriving is cut at the body deadline, with a 408") {
  Served s(options());
  const int fd = connect_from("127.0.0.1", s.port());
  send_all(fd, "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab");
  const auto got = read_until(fd, [](const std::string&) { return false; }, 3000ms);
  CHECK(got.closed);
  CHECK(got.elapsed >= 250ms);
  CHECK(got.elapsed < 1500ms);
  const auto rs = parse_responses(got.data);
  REQUIRE(rs.size() == 1);
  check_problem(rs[0], 408, "request-timeout");
  const auto e = s.wait(Kind::BodyTimeout);
  CHECK(e.peer == "127.0.0.1");
  CHECK(e.status == 408);
  ::close(fd);
}

TEST_CASE("a slow TLS handshake is cut at the handshake deadline") {
  TlsMaterial pki;
  auto o = options();
  o.tls_cert_file = pki.cert_file;
  o.tls_key_file = pki.key_file;
  o.limits.head_timeout = 5000ms;  // so that only the handshake deadline can cut
  Served s(o);
  const int fd = connect_from("127.0.0.1", s.port());
  send_all(fd, std::string("\x16\x03\x01\x02\x00", 5));  // a ClientHello's record header, then nothing
  const auto took = wait_closed(fd);
  CHECK(took >= 250ms);
  CHECK(took < 1500ms);
  CHECK(s.wait(Kind::HandshakeTimeout).peer == "127.0.0.1");
  ::close(fd);
}

TEST_CASE("a reply the client does not take is cut at the write deadline; a client hanging up kills nothing") {
  Served s(options(), [](const Request&) {
    Reply r;
    r.body.assign(32 * 1024 * 1024, 'x');
    return r;
  });
  const int fd = connect_from("127.0.0.1", s.port());
  send_all(fd, kGet);  // and never read
  CHECK(s.wait(Kind::WriteTimeout, 5000ms).peer == "127.0.0.1");
  ::close(fd);
  // Hang up in the middle of a big reply: the write fails with EPIPE/ECONNRESET, not SIGPIPE.
  for (int i = 0; i < 3; ++i) {
    const int fd2 = connect_from("127.0.0.1", s.port());
    send_all(fd2, kGet);
    read_until(fd2, [](const std::string& d) { return d.size() > 100000; }, 2000ms);
    ::close(fd2);
  }
  std::this_thread::sleep_for(100ms);
  const int fd3 = connect_from("127.0.0.1", s.port());
  send_all(fd3, "HEAD /r HTTP/1.1\r\nHost: t\r\n\r\n");
  const auto rs = parse_responses(read_until(fd3, responses(1, {true}), 3000ms).data, {true});
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].status == 200);
  CHECK(rs[0].headers.at("content-length") == std::to_string(32 * 1024 * 1024));
  ::close(fd3);
}

TEST_CASE("a TLS client that hung up before its reply does not kill the process (SIGPIPE)") {
  // Whatever the test runner left us (a blocked or ignored SIGPIPE is inherited across exec), the
  // server's threads start with SIGPIPE deliverable and fatal, as in a daemon.
  std::signal(SIGPIPE, SIG_DFL);
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  pthread_sigmask(SIG_UNBLOCK, &pipe, nullptr);
  TlsMaterial pki;
  auto o = options();
  o.tls_cert_file = pki.cert_file;
  o.tls_key_file = pki.key_file;
  Served s(o, [](const Request& r) {
    Reply rep;
    if (r.path == "/big") {
      std::this_thread::sleep_for(100ms);  // the client is gone by now
      rep.body.assign(8 * 1024 * 1024, 'x');
    }
    return rep;
  });
  pthread_sigmask(SIG_BLOCK, &pipe, nullptr);  // the server's threads have started; this test's own
                                               // client writes must not raise it
  // The client's FIN puts the server's socket in CLOSE_WAIT; the first write draws a reset, and
  // the next one fails with EPIPE, which raises SIGPIPE unless the I/O thread blocks it. TLS 1.2:
  // 1.3 session tickets would sit unread in the client, so its close would be a reset, not a FIN.
  for (int i = 0; i < 3; ++i) {
    auto c = std::make_unique<TlsClient>(s.port(), "", "", TLS1_2_VERSION);
    c->send("GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
    c.reset();
  }
  std::this_thread::sleep_for(400ms);
  TlsClient after(s.port());
  CHECK(after.exchange(kGet).status == 200);
}

TEST_CASE("the per-client cap refuses with a 503 problem document; another address is still served") {
  auto o = options();
  o.limits.max_per_client = 2;
  o.limits.head_timeout = 5000ms;
  Served s(o);
  const int a = connect_from("127.0.0.5", s.port());
  const int b = connect_from("127.0.0.5", s.port());
  std::this_thread::sleep_for(100ms);
  const int c = connect_from("127.0.0.5", s.port());
  const auto got = read_until(c, responses(1), 3000ms);
  const auto rs = parse_responses(got.data);
  REQUIRE(rs.size() == 1);
  check_problem(rs[0], 503, "connection-limit");
  CHECK(rs[0].headers.at("retry-after") == "1");
  const auto e = s.wait(Kind::Refused);
  CHECK(e.status == 503);
  CHECK(e.peer == "127.0.0.5");
  CHECK(exchange(s.port(), kGet, "127.0.0.6").status == 200);
  CHECK(s.server->stats().refused == 1);
  for (int fd : {a, b, c}) ::close(fd);
}

TEST_CASE("the total cap refuses; once a connection ends, a new one is served") {
  auto o = options();
  o.limits.max_connections = 2;
  o.limits.head_timeout = 5000ms;
  o.limits.body_timeout = 5000ms;
  Served s(o);
  // Bodies under way: neither idle nor without a head, so nothing is shed for the newcomer.
  const std::string post = "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab";
  const int a = connect_from("127.0.0.7", s.port());
  const int b = connect_from("127.0.0.8", s.port());
  send_all(a, post);
  send_all(b, post);
  std::this_thread::sleep_for(100ms);
  const int c = connect_from("127.0.0.9", s.port());
  const auto rs = parse_responses(read_until(c, responses(1), 3000ms).data);
  REQUIRE(rs.size() == 1);
  check_problem(rs[0], 503, "connection-limit");
  CHECK(s.wait(Kind::Refused).peer == "127.0.0.9");
  ::close(a);
  std::this_thread::sleep_for(100ms);
  CHECK(exchange(s.port(), kGet, "127.0.0.9").status == 200);
  ::close(b);
  ::close(c);
}

TEST_CASE("a TLS connection over a cap is closed without a handshake, and counted") {
  TlsMaterial pki;
  auto o = options();
  o.tls_cert_file = pki.cert_file;
  o.tls_key_file = pki.key_file;
  o.limits.max_per_client = 1;
  o.limits.handshake_timeout = 5000ms;
  Served s(o);
  const int a = connect_from("127.0.0.1", s.port());
  std::this_thread::sleep_for(100ms);
  CHECK_THROWS(TlsClient(s.port()));
  const auto e = s.wait(Kind::Refused);
  CHECK(e.status == 0);
  ::close(a);
}

TEST_CASE("at the total cap the oldest idle keep-alive connection is closed to make room") {
  // Two I/O loops too: the idle connection may belong to the loop that did not accept the newcomer.
  for (int loops : {1, 2, 2, 2}) {
    CAPTURE(loops);
    auto o = options();
    o.limits.io_threads = loops;
    o.limits.max_connections = 3;
    o.limits.keep_alive_idle = 10000ms;
    o.limits.head_timeout = 10000ms;
    Served s(o);
    std::vector<int> idle;
    for (const char* src : {"127.0.0.11", "127.0.0.12"}) {  // the older one first
      idle.push_back(connect_from(src, s.port()));
      send_all(idle.back(), kGet);
      REQUIRE(parse_responses(read_until(idle.back(), responses(1), 3000ms).data).size() == 1);
    }
    const int busy = connect_from("127.0.0.13", s.port());  // not idle: has not finished a request
    std::this_thread::sleep_for(100ms);
    CHECK(exchange(s.port(), kGet, "127.0.0.14").status == 200);
    const auto e = s.wait(Kind::IdleClosed);
    CHECK(s.server->stats().idle_closed == 1);
    CHECK(s.count(Kind::Refused) == 0);
    if (loops == 1) {
      CHECK(e.peer == "127.0.0.11");  // oldest first (within a loop; across loops, any loop's oldest)
      CHECK(wait_closed(idle[0]) < 3000ms);
    }
    for (int fd : idle) ::close(fd);
    ::close(busy);
  }
}

TEST_CASE("an idle keep-alive connection ends after keep_alive_idle, without an event") {
  Served s(options());
  const int fd = connect_from("127.0.0.1", s.port());
  send_all(fd, kGet);
  REQUIRE(parse_responses(read_until(fd, responses(1), 3000ms).data).size() == 1);
  const auto took = wait_closed(fd);
  CHECK(took >= 250ms);
  CHECK(took < 1500ms);
  CHECK(s.server->stats().timed_out == 0);
  ::close(fd);
}

TEST_CASE("HTTP/1.0 and Connection: close end the connection after the reply") {
  Served s(options(ServerLimits{}));
  for (const std::string req : {"GET /a HTTP/1.0\r\n\r\n", "GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"}) {
    const int fd = connect_from("127.0.0.1", s.port());
    send_all(fd, req);
    const auto got = read_until(fd, [](const std::string&) { return false; }, 3000ms);
    CHECK(got.closed);
    CHECK(got.elapsed < 2000ms);  // the default keep-alive idle is 15 s
    const auto rs = parse_responses(got.data);
    REQUIRE(rs.size() == 1);
    CHECK(rs[0].headers.at("connection") == "close");
    ::close(fd);
  }
}

TEST_CASE("Expect: 100-continue gets its interim 100 before the body is sent") {
  Served s(options());
  const int fd = connect_from("127.0.0.1", s.port());
  send_all(fd, "POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
  const auto interim = read_until(fd, [](const std::string& d) { return d.find("\r\n\r\n") != std::string::npos; }, 2000ms);
  CHECK(interim.data == "HTTP/1.1 100 Continue\r\n\r\n");
  send_all(fd, "xyz");
  const auto rs = parse_responses(read_until(fd, responses(1), 2000ms).data);
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].body == "POST /e client=127.0.0.1 body=xyz");
  ::close(fd);
}

TEST_CASE("a trusted proxy is held to the total cap only, not to the per-client cap") {
  auto o = options();
  o.limits.max_per_client = 1;
  o.limits.head_timeout = 5000ms;
  o.trusted_proxies = {"127.0.0.1"};
  Served s(o);
  const int a = connect_from("127.0.0.1", s.port());
  std::this_thread::sleep_for(50ms);
  CHECK(exchange(s.port(), kGet, "127.0.0.1").status == 200);
  CHECK(s.count(Kind::Refused) == 0);
  ::close(a);
}

TEST_CASE("X-Forwarded-For is believed from a trusted proxy only") {
  auto o = options();
  o.trusted_proxies = {"127.0.0.1", "10.0.0.1"};
  Served s(o);
  const std::string req = "GET /x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.51.100.1, 203.0.113.9, 10.0.0.1\r\n\r\n";
  CHECK(exchange(s.port(), req, "127.0.0.1").body == "GET /x client=203.0.113.9 body=");
  CHECK(exchange(s.port(), req, "127.0.0.2").body == "GET /x client=127.0.0.2 body=");
  CHECK(exchange(s.port(), "GET /x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: junk\r\n\r\n", "127.0.0.1").body ==
        "GET /x client=127.0.0.1 body=");
}

TEST_CASE("TLS: the client certificate's DER reaches the handler; none gives an empty one") {
  TlsMaterial pki;
  auto o = options();
  o.tls_cert_file = pki.cert_file;
  o.tls_key_file = pki.key_file;
  o.client_ca_file = pki.ca_file;
  Served s(o, [](const Request& r) {
    Reply rep;
    rep.body = std::string(r.peer_certificate_der.begin(), r.peer_certificate_der.end());
    rep.headers.emplace_back("X-Secure", r.secure ? "yes" : "no");
    return rep;
  });
  TlsClient with(s.port(), pki.client_cert, pki.client_key);
  const auto r = with.exchange(kGet);
  CHECK(r.status == 200);
  CHECK(r.headers.at("x-secure") == "yes");
  CHECK(r.body == pki.client_der);
  CHECK(with.exchange(kGet).body == pki.client_der);  // keep-alive over TLS
  TlsClient without(s.port());
  CHECK(without.exchange(kGet).body.empty());
}

TEST_CASE("TLS sessions resume, with a client CA asked for, in TLS 1.2 and 1.3 (tickets, no server cache), certificate kept") {
  TlsMaterial pki;
  auto o = options();
  o.tls_cert_file = pki.cert_file;
  o.tls_key_file = pki.key_file;
  o.client_ca_file = pki.ca_file;
  Served s(o, [](const Request& r) {
    Reply rep;
    rep.body = std::string(r.peer_certificate_der.begin(), r.peer_certificate_der.end());
    return rep;
  });
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    SSL_SESSION* session = nullptr;
    {
      TlsClient first(s.port(), pki.client_cert, pki.client_key, version);
      CHECK(first.exchange(kGet).status == 200);  // 1.3: the ticket arrives with the first reply
      CHECK_FALSE(first.resumed());
      session = first.session();
      first.shutdown();
    }
    TlsClient again(s.port(), pki.client_cert, pki.client_key, version, session);
    const auto r = again.exchange(kGet);
    CHECK(r.status == 200);
    CHECK(again.resumed());
    CHECK(r.body == pki.client_der);  // a resumed session still names its client certificate
    SSL_SESSION_free(session);
  }
}

TEST_CASE("a full worker queue gets a 503 problem document; a throwing handler a 500") {
  auto o = options();
  o.limits.workers = 1;
  o.limits.max_queued = 1;
  std::mutex m;
  std::condition_variable cv;
  bool release = false;
  Served s(o, [&](const Request& r) {
    if (r.path == "/throw") throw std::runtime_error("boom");
    std::unique_lock lock(m);
    cv.wait_for(lock, 5s, [&] { return release; });
    return Reply{};
  });
  const int a = connect_from("127.0.0.1", s.port());
  send_all(a, kGet);
  std::this_thread::sleep_for(100ms);  // a runs
  const int b = connect_from("127.0.0.1", s.port());
  send_all(b, kGet);
  std::this_thread::sleep_for(100ms);  // b queued
  const auto r = exchange(s.port(), kGet);
  check_problem(r, 503, "busy");
  CHECK(s.wait(Kind::Refused).status == 503);
  {
    std::lock_guard lock(m);
    release = true;
  }
  cv.notify_all();
  CHECK(parse_responses(read_until(a, responses(1), 3000ms).data).at(0).status == 200);
  CHECK(parse_responses(read_until(b, responses(1), 3000ms).data).at(0).status == 200);
  const auto thrown = exchange(s.port(), "GET /throw HTTP/1.1\r\nHost: t\r\n\r\n");
  CHECK(thrown.status == 500);
  CHECK(thrown.body.find("boom") == std::string::npos);  // internal detail stays in the log
  ::close(a);
  ::close(b);
}

TEST_CASE("at the descriptor limit accepting pauses instead of spinning, then resumes") {
  Served s(options(ServerLimits{}));
  rlimit old{};
  getrlimit(RLIMIT_NOFILE, &old);
  // Use up the descriptors: our own client sockets count against the same process limit.
  std::vector<int> held;
  rlimit low = old;
  low.rlim_cur = 64;
  REQUIRE(setrlimit(RLIMIT_NOFILE, &low) == 0);
  for (;;) {
    const int fd = ::dup(0);
    if (fd < 0) break;
    held.push_back(fd);
  }
  // Free two: one client socket connects, and the server's accept finds no descriptor.
  ::close(held.back());
  held.pop_back();
  const int c = connect_from("127.0.0.1", s.port());
  std::this_thread::sleep_for(350ms);
  const auto paused = s.server->stats().accept_paused;
  CHECK(paused >= 1);
  CHECK(paused <= 10);  // about one a 100 ms, not a spin
  for (int fd : held) ::close(fd);
  setrlimit(RLIMIT_NOFILE, &old);
  send_all(c, kGet);
  CHECK(parse_responses(read_until(c, responses(1), 3000ms).data).at(0).status == 200);
  ::close(c);
}

TEST_CASE("stop() lets a running handler finish and its reply go out, then refuses new connections") {
  std::atomic<bool> entered{false};
  Served s(options(), [&](const Request&) {
    entered = true;
    std::this_thread::sleep_for(300ms);
    Reply r;
    r.body = "finished";
    return r;
  });
  const int fd = connect_from("127.0.0.1", s.port());
  send_all(fd, kGet);
  while (!entered) std::this_thread::sleep_for(5ms);
  const int port = s.port();
  s.server->stop();  // returns after the handler
  const auto got = read_until(fd, responses(1), 2000ms);
  const auto rs = parse_responses(got.data);
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].body == "finished");
  CHECK(rs[0].headers.at("connection") == "close");
  CHECK_THROWS(connect_from("127.0.0.1", port));
  ::close(fd);
}

TEST_CASE("an IPv6 listener: address() in brackets, the peer without a port") {
  const int probe = ::socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 lo{};
  lo.sin6_family = AF_INET6;
  lo.sin6_addr = in6addr_loopback;
  const bool have_v6 = probe >= 0 && ::bind(probe, reinterpret_cast<sockaddr*>(&lo), sizeof lo) == 0;
  if (probe >= 0) ::close(probe);
  if (!have_v6) {
    MESSAGE("no IPv6 loopback here; skipped");
    return;
  }
  auto o = options();
  Server server(
      [&] {
        o.listen = "[::1]:0";
        return o;
      }(),
      [](const Request& r) {
        Reply rep;
        rep.body = r.peer_address;
        return rep;
      });
  server.start();
  CHECK(server.address() == "[::1]:" + std::to_string(server.port()));
  const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
  lo.sin6_port = htons(server.port());
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&lo), sizeof lo) == 0);
  send_all(fd, kGet);
  const auto rs = parse_responses(read_until(fd, responses(1), 3000ms).data);
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].body == "::1");
  ::close(fd);
}

TEST_CASE("the server's threads carry its name, shortened to what Linux keeps") {
  auto o = options();
  o.name = "keyline-backupdb-ops";
  Served s(o);
  std::vector<std::string> names;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    names.push_back(name);
  }
  const auto has = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  CHECK(has("backupdb-op-io0"));
  CHECK(has("backupdb-ops-w0"));
  CHECK(has("backupdb-ops-w1"));
}

TEST_CASE("bad options are ConfigErrors; stop() twice is safe") {
  ServerOptions bad;
  bad.listen = "nowhere";
  CHECK_THROWS_AS(Server(bad, [](const Request&) { return Reply{}; }), keyline::core::ConfigError);
  ServerOptions tls = options();
  tls.tls_cert_file = "/nonexistent.pem";
  tls.tls_key_file = "/nonexistent.key";
  tls.listen = "127.0.0.1:0";
  CHECK_THROWS_AS(Server(tls, [](const Request&) { return Reply{}; }), keyline::core::ConfigError);
  Served s(options());
  CHECK(exchange(s.port(), kGet).status == 200);
  s.server->stop();
  s.server->stop();
}

namespace {

// CPU time (ns) the named thread of this process has used (/proc/<pid>/task/<tid>/schedstat).
std::uint64_t thread_cpu_ns(const std::string& name) {
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string n;
    std::getline(comm, n);
    if (n != name) continue;
    std::ifstream stat(task.path() / "schedstat");
    std::uint64_t ns = 0;
    stat >> ns;
    return ns;
  }
  throw std::runtime_error("no thread " + name);
}

// Polls the server's stats until pred holds (or 3 s).
bool stats_reach(Server& server, const std::function<bool(const ServerStats&)>& pred) {
  for (int i = 0; i < 300; ++i) {
    if (pred(server.stats())) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred(server.stats());
}

}  // namespace

TEST_CASE("TLS: a client chain over 16 KiB fails the handshake, in 1.2 and 1.3; a leaf and its CA pass") {
  TlsMaterial pki;
  auto o = options();
  o.tls_cert_file = pki.cert_file;
  o.tls_key_file = pki.key_file;
  o.client_ca_file = pki.ca_file;
  Served s(o, [](const Request& r) {
    Reply rep;
    rep.body = std::to_string(r.peer_certificate_der.size());
    return rep;
  });
  const auto padded = write_padded_client_chain(pki, 60);  // ~30 KB: under OpenSSL's default 100 KiB
  REQUIRE(std::filesystem::file_size(padded) > 40000);
  for (int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    CAPTURE(version);
    // 1.3: the client's Certificate follows the server's Finished, so the failure may show on the read.
    CHECK_THROWS([&] {
      TlsClient c(s.port(), padded, pki.client_key, version);
      c.exchange(kGet);
    }());
    TlsClient fine(s.port(), pki.client_cert, pki.client_key, version);
    CHECK(fine.exchange(kGet).body == std::to_string(pki.client_der.size()));
  }
  CHECK(s.count(Kind::HandshakeFailed) == 2);
}

TEST_CASE("TLS: a client chain dear to check costs the I/O thread no more than a plain one (no chain is built)") {
  TlsMaterial pki;
  auto o = options();
  o.tls_cert_file = pki.cert_file;
  o.tls_key_file = pki.key_file;
  o.client_ca_file = pki.ca_file;
  Served s(o, [](const Request& r) {
    Reply rep;
    rep.body = std::to_string(r.peer_certificate_der.size());
    return rep;
  });
  const auto costly = write_costly_client_chain(pki, 9);
  REQUIRE(std::filesystem::file_size(costly) < 16 * 1024 * 4 / 3);  // PEM of a chain under max_cert_list
  const auto cost = [&](const std::string& chain, const std::string& key) {
    const auto before = thread_cpu_ns("test-io0");
    for (int i = 0; i < 4; ++i) {
      TlsClient c(s.port(), chain, key, TLS1_2_VERSION);
      CHECK(c.exchange(kGet).status == 200);
      CHECK(c.exchange(kGet).body != "0");  // the leaf reached the handler
    }
    return (thread_cpu_ns("test-io0") - before) / 4;
  };
  const auto plain = cost(pki.client_cert, pki.client_key);
  const auto dear = cost(costly, pki.dir + "/costly.key");
  MESSAGE("server I/O CPU per handshake: plain " << plain / 1000 << " us, costly chain " << dear / 1000 << " us");
  CHECK(dear < 3 * plain + 5'000'000);  // checking the chain costs tens of milliseconds a handshake
}

TEST_CASE("a connection's buffers are counted while held and released after its replies") {
  auto o = options(ServerLimits{});
  o.limits.io_threads = 1;
  o.limits.workers = 2;
  std::mutex m;
  std::condition_variable cv;
  bool release = false;
  Served s(o, [&](const Request& r) {
    std::unique_lock lock(m);
    cv.wait_for(lock, 5s, [&] { return release; });
    Reply rep;
    rep.body = std::to_string(r.body.size());
    return rep;
  });
  constexpr std::size_t kConns = 20, kBody = 200 * 1024;
  const std::string post = "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: " + std::to_string(kBody) + "\r\n\r\n" +
                           std::string(kBody, 'b');
  std::vector<int> fds;
  for (std::size_t i = 0; i < kConns; ++i) {
    fds.push_back(connect_from("127.0.0.1", s.port()));
    send_all(fds.back(), post);
  }
  // Two in the handlers, the rest queued: every body is held, and counted.
  CHECK(stats_reach(*s.server, [&](const ServerStats& st) { return st.buffered_bytes >= kConns * kBody; }));
  {
    std::lock_guard lock(m);
    release = true;
  }
  cv.notify_all();
  for (int fd : fds) {
    const auto rs = parse_responses(read_until(fd, responses(1), 5000ms).data);
    REQUIRE(rs.size() == 1);
    CHECK(rs[0].body == std::to_string(kBody));
    send_all(fd, kGet);  // then a tiny request on the same connection
    CHECK(parse_responses(read_until(fd, responses(1), 3000ms).data).size() == 1);
  }
  // All idle now: no connection keeps the capacity its large body needed.
  const bool drained = stats_reach(*s.server, [](const ServerStats& st) { return st.buffered_bytes == 0; });
  MESSAGE("buffered after the replies: " << s.server->stats().buffered_bytes);
  CHECK(drained);
  CHECK(s.server->stats().open_connections == kConns);
  for (int fd : fds) ::close(fd);
}

TEST_CASE("a body that does not fit the buffer budget gets 503 at once, counted as refused; later it fits") {
  auto o = options();
  o.limits.max_buffered_bytes = 1024 * 1024;
  o.limits.max_buffered_per_client = 1024 * 1024;  // one address here: the total budget alone
  o.limits.max_body_bytes = 512 * 1024;
  o.limits.body_timeout = 5000ms;
  o.limits.head_timeout = 5000ms;
  Served s(o);
  const auto head = [](std::size_t length) {
    return "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: " + std::to_string(length) + "\r\n\r\n";
  };
  std::vector<int> slow;
  for (int i = 0; i < 2; ++i) {  // two slow bodies of 400 000 bytes hold 800 000 of the 1 MiB
    slow.push_back(connect_from("127.0.0.1", s.port()));
    send_all(slow.back(), head(400000) + std::string(1000, 'x'));
  }
  std::this_thread::sleep_for(100ms);
  const int c = connect_from("127.0.0.1", s.port());
  send_all(c, head(400000));
  const auto got = read_until(c, responses(1), 3000ms);
  const auto rs = parse_responses(got.data);
  REQUIRE(rs.size() == 1);
  check_problem(rs[0], 503, "busy");
  CHECK(rs[0].headers.at("retry-after") == "1");
  CHECK(got.elapsed < 1000ms);  // not at the 5 s body deadline
  CHECK(s.wait(Kind::Refused).status == 503);
  CHECK(s.server->stats().refused == 1);
  CHECK(exchange(s.port(), head(3) + "abc").status == 200);  // a small body still fits
  ::close(c);
  for (int fd : slow) ::close(fd);
  CHECK(stats_reach(*s.server, [](const ServerStats& st) { return st.buffered_bytes < 1024; }));
  const auto big = exchange(s.port(), head(400000) + std::string(400000, 'y'));
  CHECK(big.status == 200);
}

TEST_CASE("more header fields than max_header_fields get 431") {
  Served s(options());
  std::string fields;
  for (int i = 0; i < 99; ++i) fields += "a:\r\n";  // with Host: 100, the default cap
  CHECK(exchange(s.port(), "GET /h HTTP/1.1\r\nHost: t\r\n" + fields + "\r\n").status == 200);
  check_problem(exchange(s.port(), "GET /h HTTP/1.1\r\nHost: t\r\n" + fields + "a:\r\n\r\n"), 431,
                "too-many-header-fields");
  // The reviewer's head: 16 KB of "a:" lines, thousands of fields in a head within max_head_bytes.
  std::string many;
  while (many.size() < 15000) many += "a:\r\n";
  check_problem(exchange(s.port(), "GET /h HTTP/1.1\r\nHost: t\r\n" + many + "\r\n"), 431, "too-many-header-fields");
  CHECK(s.server->stats().malformed == 2);
}

TEST_CASE("a bare LF anywhere in a head gets 400: no header can hide inside another") {
  Served s(options());
  for (const std::string req : {"GET /x HTTP/1.1\r\nHost: t\r\nX-Note: a\nContent-Length: 5\r\n\r\nhello",
                                "GET /x HTTP/1.1\nHost: t\r\n\r\n", "\nGET /x HTTP/1.1\r\nHost: t\r\n\r\n",
                                "GET /x HTTP/1.1\r\nHost: t\n\n"}) {
    CAPTURE(req);
    check_problem(exchange(s.port(), req), 400, "bad-line-end");
  }
  // Empty lines (CRLF) before a request line are still skipped (RFC 9112 section 2.2).
  CHECK(exchange(s.port(), "\r\n\r\n" + kGet).status == 200);
}

TEST_CASE("a control character or obs-text in a header value gets 400; HTAB and SP pass") {
  Served s(options());
  for (const auto& value : {std::string("a\x01" "b"), std::string("a\x7f"), std::string("\xff"),
                                  std::string("x\x1b[2Jy"), std::string("caf\xc3\xa9")}) {
    CAPTURE(value);
    check_problem(exchange(s.port(), "GET /c HTTP/1.1\r\nHost: t\r\nX-V: " + value + "\r\n\r\n"), 400, "bad-header");
  }
  CHECK(exchange(s.port(), "GET /c HTTP/1.1\r\nHost: t\r\nX-V: a\tb c ~!\r\n\r\n").status == 200);
}

TEST_CASE("trusted proxies are compared as addresses, not as text; a bad one is a ConfigError") {
  auto o = options();
  o.limits.max_per_client = 1;
  o.limits.head_timeout = 5000ms;
  o.trusted_proxies = {"::ffff:127.0.0.1", "2001:DB8::1"};  // the peer 127.0.0.1, and a hop in another form
  Served s(o);
  CHECK(exchange(s.port(), "GET /x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.51.100.7, 2001:db8:0::1\r\n\r\n").body ==
        "GET /x client=198.51.100.7 body=");
  CHECK(exchange(s.port(), "GET /x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 2001:DB8::ABCD\r\n\r\n").body ==
        "GET /x client=2001:db8::abcd body=");
  const int held = connect_from("127.0.0.1", s.port());  // a trusted proxy: not held to max_per_client
  std::this_thread::sleep_for(50ms);
  CHECK(exchange(s.port(), kGet).status == 200);
  ::close(held);
  for (const char* bad : {"proxy.example", "10.0.0.0/8", "", "10.0.0.1 "}) {
    CAPTURE(bad);
    auto b = options();
    b.listen = "127.0.0.1:0";
    b.trusted_proxies = {bad};
    CHECK_THROWS_AS(Server(b, [](const Request&) { return Reply{}; }), keyline::core::ConfigError);
  }
}

// The attacker review: a page in a browser on the host rebinds its own name to 127.0.0.1 and reads
// /metrics or the line page. An operations listener answers only a Host that names it.
TEST_CASE("an operations listener answers 421 to a Host that does not name it (DNS rebinding)") {
  ::setenv("KEYLINE_OPS_HOSTS", "ops.line.example,Station-7", 1);
  ServerOptions o = operations_listener("test-ops", "127.0.0.1:0");
  ::unsetenv("KEYLINE_OPS_HOSTS");
  CHECK(o.check_host);
  Served s(o);
  const std::string port = std::to_string(s.port());
  const auto get = [&](const std::string& host_line) {
    return exchange(s.port(), "GET /metrics HTTP/1.1\r\n" + host_line + "\r\n");
  };
  for (const std::string& h : std::vector<std::string>{"rebind.attacker.example:" + port, "rebind.attacker.example", "127.0.0.1.attacker.example:" + port,
                              "localhost:1", "127.0.0.1:" + std::to_string(s.port() + 1), "ops.line.example.evil:" + port}) {
    CAPTURE(h);
    const auto r = get("Host: " + h + "\r\n");
    check_problem(r, 421, "misdirected");
    CHECK(r.body.find("GET /metrics") == std::string::npos);
  }
  for (const std::string& h : std::vector<std::string>{"127.0.0.1:" + port, "localhost:" + port, "LocalHost:" + port, "[::1]:" + port,
                              "127.0.0.1", "10.1.2.3:" + port, "ops.line.example:" + port, "station-7"}) {
    CAPTURE(h);
    const auto r = get("Host: " + h + "\r\n");
    CHECK(r.status == 200);
    CHECK(r.body.find("GET /metrics") == 0);
  }
  // HTTP/1.0 without Host: nothing names the listener either.
  check_problem(exchange(s.port(), "GET /metrics HTTP/1.0\r\n\r\n"), 421, "misdirected");
  // A listener that is not an operations listener does not check.
  Served plain(options());
  CHECK(exchange(plain.port(), "GET /r HTTP/1.1\r\nHost: rebind.attacker.example\r\n\r\n").status == 200);
}

// The attacker review: 40 trickling connections from 127.0.0.2-4 took every slot of the station's
// page and /metrics. Other addresses get 4 each and never the slots kept for 127.0.0.1 / ::1.
TEST_CASE("an operations listener keeps room for 127.0.0.1 while other loopback addresses trickle") {
  ServerOptions o = operations_listener("test-ops", "127.0.0.1:0");
  o.limits.head_timeout = 10s;  // the tricklers are not timed out during the test
  Served s(o);
  std::vector<int> held;
  std::size_t from_one = 0;
  for (int a = 2; a <= 13; ++a) {  // 12 addresses x 6 connections: 72, more than the 64 in total
    for (int i = 0; i < 6; ++i) {
      const int fd = connect_from("127.0.0." + std::to_string(a), s.port());
      send_all(fd, "GET /metrics HTTP/1.1\r\nHo");  // a head that never ends
      held.push_back(fd);
    }
  }
  std::this_thread::sleep_for(300ms);
  // Each address holds at most 4; together at most 64 - 16.
  CHECK(s.server->stats().open_connections <= 48);
  for (std::size_t i = 0; i < 6; ++i) {
    const auto r = read_until(held[i], [](const std::string&) { return false; }, 50ms);
    if (!r.closed) ++from_one;
  }
  CHECK(from_one == 4);
  const auto r = exchange(s.port(), "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(s.port()) + "\r\n\r\n");
  CHECK(r.status == 200);
  for (const int fd : held) ::close(fd);
}

TEST_CASE("at the total cap the oldest connection without a request head is closed to make room") {
  for (const bool tls : {false, true}) {
    CAPTURE(tls);
    TlsMaterial pki;
    auto o = options();
    if (tls) {
      o.tls_cert_file = pki.cert_file;
      o.tls_key_file = pki.key_file;
    }
    o.limits.max_connections = 3;
    o.limits.handshake_timeout = 10000ms;
    o.limits.head_timeout = 10000ms;
    o.limits.body_timeout = 10000ms;
    Served s(o);
    const int silent = connect_from("127.0.0.31", s.port());  // the oldest: never sends anything
    std::this_thread::sleep_for(50ms);
    const int slow = connect_from("127.0.0.32", s.port());  // newer, also silent
    std::this_thread::sleep_for(50ms);
    // A third that talks: a body under way (plain), a handshake done (TLS) — not the oldest.
    std::unique_ptr<TlsClient> talker;
    int body = -1;
    if (tls) {
      talker = std::make_unique<TlsClient>(s.port());
    } else {
      body = connect_from("127.0.0.33", s.port());
      send_all(body, "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab");
    }
    std::this_thread::sleep_for(100ms);
    if (tls) {
      TlsClient fresh(s.port());
      CHECK(fresh.exchange(kGet).status == 200);
    } else {
      CHECK(exchange(s.port(), kGet, "127.0.0.34").status == 200);
    }
    const auto e = s.wait(Kind::IdleClosed);
    CHECK(e.peer == "127.0.0.31");
    CHECK(e.detail.find("without a complete request head") != std::string::npos);
    CHECK(s.server->stats().idle_closed >= 1);
    CHECK(s.count(Kind::Refused) == 0);
    CHECK(wait_closed(silent) < 3000ms);
    if (!tls) {
      send_all(body, "cdefghij");  // the body under way was not touched
      const auto rs = parse_responses(read_until(body, responses(1), 3000ms).data);
      REQUIRE(rs.size() == 1);
      CHECK(rs[0].status == 200);
      ::close(body);
    }
    ::close(silent);
    ::close(slow);
  }
}

TEST_CASE("one client address holding its share of the buffer budget cannot make another's request 503") {
  auto o = options();
  o.limits.max_buffered_bytes = 4 * 1024 * 1024;  // the share: 1/16, 256 KiB
  o.limits.max_body_bytes = 512 * 1024;
  o.limits.body_timeout = 5000ms;
  o.limits.head_timeout = 5000ms;
  o.limits.max_per_client = 64;
  Served s(o);
  const auto head = [](std::size_t length) {
    return "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: " + std::to_string(length) + "\r\n\r\n";
  };
  // 25 slow bodies of 200 000 bytes from one address would hold 5 MB of the 4 MiB without the share.
  std::vector<int> slow;
  for (int i = 0; i < 25; ++i) {
    slow.push_back(connect_from("127.0.0.41", s.port()));
    send_all(slow.back(), head(200000) + "x");
  }
  std::this_thread::sleep_for(200ms);
  CHECK(s.server->stats().buffered_bytes < 256 * 1024);
  CHECK(s.count(Kind::Refused) == 24);  // all but the first over the address's share
  const auto other = exchange(s.port(), head(100000) + std::string(100000, 'y'), "127.0.0.42");
  CHECK(other.status == 200);
  CHECK(exchange(s.port(), kGet, "127.0.0.43").status == 200);
  // The holder itself is over its share: its next body is refused.
  const auto again = exchange(s.port(), head(100000) + std::string(100000, 'z'), "127.0.0.41");
  CHECK(again.status == 503);
  for (int fd : slow) ::close(fd);
  CHECK(stats_reach(*s.server, [](const ServerStats& st) { return st.buffered_bytes < 1024; }));
  // The share is given back: the same address is served again.
  CHECK(exchange(s.port(), head(200000) + std::string(200000, 'z'), "127.0.0.41").status == 200);
}

TEST_CASE("a trusted proxy is not held to the per-client share of the buffer budget") {
  auto o = options();
  o.limits.max_buffered_bytes = 1024 * 1024;
  o.limits.max_body_bytes = 512 * 1024;
  o.limits.body_timeout = 5000ms;
  o.trusted_proxies = {"127.0.0.51"};
  Served s(o);
  const std::string post = "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\nx";
  const int held = connect_from("127.0.0.51", s.port());
  send_all(held, post);
  std::this_thread::sleep_for(100ms);
  CHECK(s.count(Kind::Refused) == 0);
  CHECK(s.server->stats().buffered_bytes >= 200000);
  ::close(held);
}

TEST_CASE("the admit hook refuses at the head: the body is never read nor counted") {
  std::atomic<int> handled{0};
  auto o = options();
  o.limits.max_buffered_bytes = 1024 * 1024;
  o.limits.max_body_bytes = 512 * 1024;
  o.limits.body_timeout = 5000ms;
  o.limits.head_timeout = 5000ms;
  std::atomic<bool> saw_peer{false};
  o.admit = [&](const Request& head) -> std::optional<Reply> {
    saw_peer = head.peer_address == "127.0.0.61" && head.body.empty();
    if (head.method != "POST" || head.header("x-station")) return std::nullopt;
    Reply r;
    r.status = 401;
    r.content_type = "application/problem+json";
    r.body = "{\"type\":\"https://keyline.example/problems/client-certificate-required\",\"status\":401}";
    return r;
  };
  Served s(o, [&](const Request& r) {
    ++handled;
    Reply rep;
    rep.body = r.body.substr(0, 3);
    return rep;
  });
  const int fd = connect_from("127.0.0.61", s.port());
  // Expect: 100-continue: the client waits for a go-ahead it never gets, so it never sends the body.
  send_all(fd, "POST /v1/records HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 400000\r\n\r\n");
  const auto got = read_until(fd, responses(1), 3000ms);
  CHECK(got.elapsed < 1000ms);
  CHECK(got.data.rfind("HTTP/1.1 401", 0) == 0);  // no 100 Continue before it
  const auto rs = parse_responses(got.data);
  REQUIRE(rs.size() == 1);
  check_problem(rs[0], 401, "client-certificate-required");
  CHECK(saw_peer);
  CHECK(s.server->stats().buffered_bytes < 64 * 1024);  // the 400 000 were never reserved
  CHECK(wait_closed(fd) < 3000ms);
  ::close(fd);
  CHECK(handled == 0);
  // Nine more refused heads of 400 000 bytes leave the budget to a request that is let through.
  std::vector<int> refused;
  for (int i = 0; i < 9; ++i) {
    refused.push_back(connect_from("127.0.0.62", s.port()));
    send_all(refused.back(), "POST /v1/records HTTP/1.1\r\nHost: t\r\nContent-Length: 400000\r\n\r\n");
  }
  std::this_thread::sleep_for(100ms);
  CHECK(s.server->stats().buffered_bytes < 64 * 1024);
  CHECK(exchange(s.port(), "POST /v1/records HTTP/1.1\r\nHost: t\r\nX-Station: 1\r\nContent-Length: 3\r\n\r\nabc", "127.0.0.63")
            .status == 200);
  CHECK(handled == 1);
  for (int r : refused) ::close(r);
}

TEST_CASE("the per-client caps count an IPv6 client by its /64") {
  CHECK(client_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "2001:db8:1:2::/64");
  CHECK(client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64");
  CHECK(client_key("2001:DB8:1:2:ffff::9") == "2001:db8:1:2::/64");
  CHECK(client_key("2001:db8:1:3::1") == "2001:db8:1:3::/64");
  CHECK(client_key("fe80::1") == "fe80::/64");
  CHECK(client_key("::1") == "::1");  // the loopback address is one host, and the operator's
  CHECK(client_key("192.0.2.7") == "192.0.2.7");
  CHECK(client_key("127.0.0.1") == "127.0.0.1");
}
