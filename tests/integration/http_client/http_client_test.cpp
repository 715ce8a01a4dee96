// core::http::Client against a hostile server (docs/operations.md, "Client limits"): an answer larger
// than max_body is refused before it is read (Content-Length) or cut where it passes the cap (chunked,
// or read until close); an answer trickled within the per-recv timeout still has to be complete within
// io_timeout. The server is a real listening socket served by a thread of this test.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "keyline/core/error.h"
#include "keyline/core/http.h"

namespace http = keyline::core::http;
using keyline::core::Error;
using keyline::core::ErrorCode;
using namespace std::chrono_literals;

namespace {

// false once the client hung up (the server then stops sending).
bool send_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

// Accepts one connection, reads the request head, then runs the scenario on the socket.
class TinyServer {
 public:
  explicit TinyServer(std::function<void(int)> answer) {
    m_listen = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(m_listen, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(m_listen, 4) == 0);
    socklen_t len = sizeof a;
    ::getsockname(m_listen, reinterpret_cast<sockaddr*>(&a), &len);
    m_port = ntohs(a.sin_port);
    m_thread = std::thread([this, answer] {
      const int c = ::accept(m_listen, nullptr, nullptr);
      if (c < 0) return;
      std::string head;
      char ch;
      while (head.find("\r\n\r\n") == std::string::npos && ::recv(c, &ch, 1, 0) == 1) head += ch;
      answer(c);
      ::close(c);
    });
  }
  ~TinyServer() {
    ::shutdown(m_listen, SHUT_RDWR);
    m_thread.join();
    ::close(m_listen);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(m_port); }

 private:
  int m_listen = -1;
  int m_port = 0;
  std::thread m_thread;
};

http::ClientOptions options(const TinyServer& s) {
  http::ClientOptions o;
  o.base_url = s.url();
  o.connect_attempts = 1;
  o.io_timeout = 1000ms;
  o.max_body = 64 * 1024;
  return o;
}

// Runs the request and returns the code of the core::Error it threw (0: it returned an answer).
int error_of(http::Client& c, std::chrono::milliseconds& took) {
  const auto t0 = std::chrono::steady_clock::now();
  int code = 0;
  try {
    const auto r = c.get("/v1/records/x");
    MESSAGE("answer: HTTP " << r.status << ", " << r.body.size() << " bytes");
  } catch (const Error& e) {
    MESSAGE("error " << e.numeric() << ": " << e.what());
    code = e.numeric();
  }
  took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  return code;
}

}  // namespace

TEST_CASE("http client: a Content-Length above max_body is refused before the body is read") {
  TinyServer s([](int c) {
    send_all(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{");
    std::this_thread::sleep_for(3s);  // never sends the rest: a client that waits for it times out
  });
  http::Client c(options(s));
  std::chrono::milliseconds took{};
  CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Http));
  CHECK(took < 500ms);
}

TEST_CASE("http client: an endless chunked body is cut at max_body") {
  std::atomic<std::size_t> sent{0};
  TinyServer s([&sent](int c) {
    if (!send_all(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")) return;
    const std::string chunk = "4000\r\n" + std::string(0x4000, 'a') + "\r\n";
    // 64 MiB stands in for "endless": a client without a cap returns it all.
    while (sent < 64u * 1024 * 1024 && send_all(c, chunk)) sent += 0x4000;
    send_all(c, "0\r\n\r\n");
  });
  http::Client c(options(s));
  std::chrono::milliseconds took{};
  CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Http));
  CHECK(sent.load() < 16u * 1024 * 1024);  // the client stopped reading long before the end
}

TEST_CASE("http client: a body without length that goes on past max_body is cut") {
  TinyServer s([](int c) {
    if (!send_all(c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")) return;
    for (int i = 0; i < 1024 && send_all(c, std::string(16384, 'b')); ++i) {
    }
  });
  http::Client c(options(s));
  std::chrono::milliseconds took{};
  CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Http));
}

TEST_CASE("http client: a body of exactly max_body is read whole") {
  TinyServer s([](int c) {
    send_all(c, "HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n" + std::string(65536, 'c'));
  });
  http::Client c(options(s));
  const auto r = c.get("/");
  CHECK(r.status == 200);
  CHECK(r.body.size() == 65536);
}

TEST_CASE("http client: a body trickled a byte per 100 ms must still be complete within io_timeout") {
  TinyServer s([](int c) {
    if (!send_all(c, "HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")) return;
    for (int i = 0; i < 40 && send_all(c, "d"); ++i) std::this_thread::sleep_for(100ms);  // 4 s in all
  });
  http::Client c(options(s));
  std::chrono::milliseconds took{};
  CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Timeout));
  CHECK(took < 2500ms);
}

TEST_CASE("http client: a status line and headers trickled a byte per 100 ms hit the same deadline") {
  TinyServer s([](int c) {
    const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n";
    for (const char ch : head) {
      if (!send_all(c, std::string(1, ch))) return;
      std::this_thread::sleep_for(100ms);
    }
  });
  http::Client c(options(s));
  std::chrono::milliseconds took{};
  CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Timeout));
  CHECK(took < 2500ms);
}
