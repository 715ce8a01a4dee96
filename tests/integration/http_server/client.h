// Raw test clients for core::http::Server: plain sockets bound to a chosen loopback source, and a
// blocking OpenSSL client, so the tests control every byte and every pause.
#pragma once

#include <openssl/ssl.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace keyline::test {

// Connects from `source` (any 127.0.0.0/8 address) to 127.0.0.1:port. Throws on failure.
int connect_from(const std::string& source, int port);
void send_all(int fd, const std::string& data);

struct Received {
  std::string data;
  bool closed = false;  // EOF or reset seen
  std::chrono::milliseconds elapsed{0};
};
// Reads until done(data) holds, the peer closes, or timeout.
Received read_until(int fd, const std::function<bool(const std::string&)>& done, std::chrono::milliseconds timeout);

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};
// The complete responses at the start of data (bodies per Content-Length; none for HEAD replies).
std::vector<Response> parse_responses(const std::string& data, const std::vector<bool>& head = {});
std::function<bool(const std::string&)> responses(std::size_t n, const std::vector<bool>& head = {});

// One request on a fresh plain connection, read to its reply.
Response exchange(int port, const std::string& request, const std::string& source = "127.0.0.1");

class TlsClient {
 public:
  // Blocking handshake with 127.0.0.1:port; client certificate when cert_file is set.
  // max_version: e.g. TLS1_2_VERSION (0: the library's highest).
  TlsClient(int port, const std::string& cert_file = {}, const std::string& key_file = {}, int max_version = 0,
            SSL_SESSION* resume = nullptr);
  ~TlsClient();
  TlsClient(const TlsClient&) = delete;
  TlsClient& operator=(const TlsClient&) = delete;
  Response exchange(const std::string& request);
  void send(const std::string& data);
  SSL_SESSION* session() const { return SSL_get1_session(m_ssl); }  // the caller frees it
  bool resumed() const { return SSL_session_reused(m_ssl) == 1; }
  void shutdown() { SSL_shutdown(m_ssl); }  // close_notify: only a session shut down cleanly resumes

 private:
  SSL_CTX* m_ctx = nullptr;
  SSL* m_ssl = nullptr;
  int m_fd = -1;
};

}  // namespace keyline::test
