// core::http::Client against a hostile server (docs/operations.md, "Client limits"): an answer larger
// than max_body is refused before it is read (Content-Length) or cut where it passes the cap (chunked,
// or read until close); an answer trickled within the per-recv timeout still has to be complete within
// io_timeout. The server is a real listening socket served by a thread of this test.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include <botan/auto_rng.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/http.h"

namespace http = keyline::core::http;
using keyline::core::Error;
using keyline::core::ErrorCode;
using namespace std::chrono_literals;

namespace {

// One accepted connection, plain or TLS. send_all is false once the client hung up (the server
// then stops sending).
struct Conn {
  int fd = -1;
  SSL* ssl = nullptr;
  bool send_all(const std::string& s) const {
    std::size_t off = 0;
    while (off < s.size()) {
      const int n = ssl ? SSL_write(ssl, s.data() + off, static_cast<int>(s.size() - off))
                        : static_cast<int>(::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL));
      if (n <= 0) return false;
      off += static_cast<std::size_t>(n);
    }
    return true;
  }
  bool recv_byte(char& ch) const { return ssl ? SSL_read(ssl, &ch, 1) == 1 : ::recv(fd, &ch, 1, 0) == 1; }
};

// A server certificate for 127.0.0.1 under a fresh root, as PEM files for the TLS cases.
struct TestPki {
  std::string dir, root_pem, cert_pem, key_pem;
  TestPki() {
    char tmpl[] = "/tmp/http_client_test.XXXXXX";
    dir = ::mkdtemp(tmpl);
    Botan::AutoSeeded_RNG rng;
    const Botan::ECDSA_PrivateKey root_key(rng, Botan::EC_Group("secp256r1"));
    const Botan::ECDSA_PrivateKey key(rng, Botan::EC_Group("secp256r1"));
    const auto root = keyline::core::make_root_certificate(root_key, "test root", "Test", rng);
    const auto cert = keyline::core::issue_tls_certificate(root, root_key, key, "127.0.0.1", {"127.0.0.1"},
                                                           keyline::core::TlsRole::Server, rng);
    root_pem = dir + "/root.pem";
    cert_pem = dir + "/server.pem";
    key_pem = dir + "/server.key";
    std::ofstream(root_pem) << keyline::core::to_pem(root);
    std::ofstream(cert_pem) << keyline::core::to_pem(cert);
    std::ofstream(key_pem) << Botan::PKCS8::PEM_encode(key);
  }
  ~TestPki() { std::filesystem::remove_all(dir); }
};

const TestPki& pki() {
  static const TestPki p;
  return p;
}

enum class Tls { None, Handshake, Silent };  // Silent: accepts TCP, never answers the ClientHello

// Accepts one connection, reads the request head, then runs the scenario on the connection.
class TinyServer {
 public:
  explicit TinyServer(std::function<void(const Conn&)> answer, Tls tls = Tls::None) {
    m_listen = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(m_listen, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(m_listen, 4) == 0);
    socklen_t len = sizeof a;
    ::getsockname(m_listen, reinterpret_cast<sockaddr*>(&a), &len);
    m_port = ntohs(a.sin_port);
    m_tls = tls;
    if (tls != Tls::None) {
      m_ctx = SSL_CTX_new(TLS_server_method());
      REQUIRE(SSL_CTX_use_certificate_file(m_ctx, pki().cert_pem.c_str(), SSL_FILETYPE_PEM) == 1);
      REQUIRE(SSL_CTX_use_PrivateKey_file(m_ctx, pki().key_pem.c_str(), SSL_FILETYPE_PEM) == 1);
    }
    m_thread = std::thread([this, answer] {
      Conn c;
      c.fd = ::accept(m_listen, nullptr, nullptr);
      if (c.fd < 0) return;
      if (m_tls == Tls::Silent) {
        std::this_thread::sleep_for(std::chrono::seconds(4));
      } else {
        if (m_tls == Tls::Handshake) {
          c.ssl = SSL_new(m_ctx);
          SSL_set_fd(c.ssl, c.fd);
          if (SSL_accept(c.ssl) != 1) c.fd = -1;
        }
        std::string head;
        char ch;
        while (c.fd >= 0 && head.find("\r\n\r\n") == std::string::npos && c.recv_byte(ch)) head += ch;
        if (c.fd >= 0) answer(c);
      }
      if (c.ssl) SSL_free(c.ssl);
      ::close(c.fd);
    });
  }
  ~TinyServer() {
    ::shutdown(m_listen, SHUT_RDWR);
    m_thread.join();
    ::close(m_listen);
    if (m_ctx) SSL_CTX_free(m_ctx);
  }
  std::string url() const {
    return std::string(m_tls == Tls::None ? "http" : "https") + "://127.0.0.1:" + std::to_string(m_port);
  }

 private:
  Tls m_tls = Tls::None;
  SSL_CTX* m_ctx = nullptr;
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
  o.ca_file = pki().root_pem;
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
    MESSAGE("error " << e.numeric() << ": " << std::string(e.what()));
    code = e.numeric();
  }
  took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  return code;
}

}  // namespace

TEST_CASE("http client: a Content-Length above max_body is refused before the body is read") {
  TinyServer s([](const Conn& c) {
    c.send_all("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{");
    std::this_thread::sleep_for(3s);  // never sends the rest: a client that waits for it times out
  });
  http::Client c(options(s));
  std::chrono::milliseconds took{};
  CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Http));
  CHECK(took < 500ms);
}

TEST_CASE("http client: an endless chunked body is cut at max_body") {
  std::atomic<std::size_t> sent{0};
  TinyServer s([&sent](const Conn& c) {
    if (!c.send_all("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")) return;
    const std::string chunk = "4000\r\n" + std::string(0x4000, 'a') + "\r\n";
    // 64 MiB stands in for "endless": a client without a cap returns it all.
    while (sent < 64u * 1024 * 1024 && c.send_all(chunk)) sent += 0x4000;
    c.send_all("0\r\n\r\n");
  });
  http::Client c(options(s));
  std::chrono::milliseconds took{};
  CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Http));
  CHECK(sent.load() < 16u * 1024 * 1024);  // the client stopped reading long before the end
}

TEST_CASE("http client: a body without length that goes on past max_body is cut") {
  TinyServer s([](const Conn& c) {
    if (!c.send_all("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")) return;
    for (int i = 0; i < 1024 && c.send_all(std::string(16384, 'b')); ++i) {
    }
  });
  http::Client c(options(s));
  std::chrono::milliseconds took{};
  CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Http));
}

TEST_CASE("http client: a body of exactly max_body is read whole") {
  TinyServer s([](const Conn& c) {
    c.send_all("HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n" + std::string(65536, 'c'));
  });
  http::Client c(options(s));
  const auto r = c.get("/");
  CHECK(r.status == 200);
  CHECK(r.body.size() == 65536);
}

TEST_CASE("http client: a body trickled a byte per 100 ms must still be complete within io_timeout") {
  TinyServer s([](const Conn& c) {
    if (!c.send_all("HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")) return;
    for (int i = 0; i < 40 && c.send_all("d"); ++i) std::this_thread::sleep_for(100ms);  // 4 s in all
  });
  http::Client c(options(s));
  std::chrono::milliseconds took{};
  CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Timeout));
  CHECK(took < 2500ms);
}

TEST_CASE("http client: a status line and headers trickled a byte per 100 ms hit the same deadline") {
  TinyServer s([](const Conn& c) {
    const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n";
    for (const char ch : head) {
      if (!c.send_all(std::string(1, ch))) return;
      std::this_thread::sleep_for(100ms);
    }
  });
  http::Client c(options(s));
  std::chrono::milliseconds took{};
  CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Timeout));
  CHECK(took < 2500ms);
}

TEST_CASE("https client: a body trickled over TLS hits the same deadline; a Content-Length above the cap is refused") {
  {
    TinyServer s(
        [](const Conn& c) {
          if (!c.send_all("HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")) return;
          for (int i = 0; i < 40 && c.send_all("d"); ++i) std::this_thread::sleep_for(100ms);
        },
        Tls::Handshake);
    http::Client c(options(s));
    std::chrono::milliseconds took{};
    CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Timeout));
    CHECK(took < 2500ms);
  }
  {
    TinyServer s([](const Conn& c) { c.send_all("HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"); },
                 Tls::Handshake);
    http::Client c(options(s));
    std::chrono::milliseconds took{};
    CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Http));
  }
}

TEST_CASE("https client: a server that never answers the TLS handshake cannot hold the client") {
  TinyServer s([](const Conn&) {}, Tls::Silent);
  auto o = options(s);
  o.connect_timeout = 500ms;
  http::Client c(o);
  std::chrono::milliseconds took{};
  CHECK(error_of(c, took) == static_cast<int>(ErrorCode::Timeout));
  CHECK(took < 2500ms);  // connect_timeout + io_timeout at most
}

TEST_CASE("https client: an honest TLS answer is read whole (the certificate and its host name are checked)") {
  TinyServer s([](const Conn& c) { c.send_all("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"); },
               Tls::Handshake);
  http::Client c(options(s));
  const auto r = c.get("/");
  CHECK(r.status == 200);
  CHECK(r.body == "hello");
}
