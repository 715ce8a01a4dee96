// HTTP helpers shared by the servers and the clients: RFC 9457 problem documents, and an HTTP(S)
// client for the station and recovery tool (Poco HTTPSClientSession, a private CA file, an optional
// client certificate for mutual TLS, timeouts, retry with backoff when the connection cannot be made).
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <Poco/Net/Context.h>

namespace keyline::core::http {

// RFC 9457 problem document. type is a URI reference ("about:blank" when the status says it all);
// extra members are added verbatim as JSON strings.
std::string problem_json(int status, const std::string& title, const std::string& detail,
                         const std::string& type = "about:blank",
                         const std::vector<std::pair<std::string, std::string>>& extra = {});
constexpr const char* kProblemContentType = "application/problem+json";

// Reason phrase for a status (RFC 9110 section 15); "Unknown" when not listed.
const char* reason_phrase(int status) noexcept;

struct ClientOptions {
  std::string base_url;  // "https://127.0.0.1:8443" or "http://..." (plain only when asked for)
  std::string ca_file;   // PEM file with the CA(s) that issue the server certificate; required for https
  std::string cert_file; // optional client certificate (PEM) for mutual TLS
  std::string key_file;  // its private key (PEM)
  // A ready TLS context instead of the three files above: the station's client key lives on the HSM
  // token and reaches OpenSSL through the PKCS#11 engine (station/src/tls_token_key.cpp).
  Poco::Net::Context::Ptr context;
  std::chrono::milliseconds connect_timeout{5000};
  // The whole answer (status line, headers, body) must arrive within io_timeout of the request being
  // sent, not only each recv: a server that trickles a byte at a time cannot hold the client.
  std::chrono::milliseconds io_timeout{30000};
  // The largest answer body read. A larger Content-Length is refused before reading; a body that goes
  // on past it (chunked, or no length) is cut there. Either throws Error(Http) and drops the connection,
  // so a hostile server cannot exhaust the client's memory.
  std::size_t max_body = 1024 * 1024;
  int connect_attempts = 4;                        // attempts when the connection cannot be made
  std::chrono::milliseconds backoff{250};          // doubled after each failed attempt
};

struct Response {
  int status = 0;
  std::string content_type;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string header(const std::string& lower_name) const;
};

// One client per thread (a Poco session is not thread-safe). Requests that reach the server are
// never retried (a POST might have been applied); only failures to connect are retried.
// Throws IoError(Network) when the server cannot be reached after all attempts, Error(Timeout) when
// the answer is not complete within io_timeout, Error(Http) when its body exceeds max_body,
// ConfigError for a bad URL or unreadable TLS files. HTTP error statuses are returned, not thrown.
class Client {
 public:
  explicit Client(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  Response get(const std::string& path, const std::map<std::string, std::string>& headers = {});
  Response post(const std::string& path, const std::string& body, const std::string& content_type,
                const std::map<std::string, std::string>& headers = {});

 private:
  Response request(const std::string& method, const std::string& path, const std::string* body,
                   const std::string& content_type, const std::map<std::string, std::string>& headers);
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

// Minimal JSON string escaping (RFC 8259 section 7) for hand-built documents.
std::string json_escape(const std::string& s);

}  // namespace keyline::core::http
