#include "client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <stdexcept>

namespace keyline::test {

int connect_from(const std::string& source, int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in src{};
  src.sin_family = AF_INET;
  inet_pton(AF_INET, source.c_str(), &src.sin_addr);
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("connect from " + source + " failed");
  }
  return fd;
}

void send_all(int fd, const std::string& data) {
  std::size_t done = 0;
  while (done < data.size()) {
    const auto n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n <= 0) throw std::runtime_error("send failed");
    done += static_cast<std::size_t>(n);
  }
}

Received read_until(int fd, const std::function<bool(const std::string&)>& done, std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  Received r;
  while (!done(r.data)) {
    const auto left = timeout - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[65536];
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      r.closed = true;
      break;
    }
    r.data.append(buf, static_cast<std::size_t>(n));
  }
  r.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  return r;
}

std::vector<Response> parse_responses(const std::string& data, const std::vector<bool>& head) {
  std::vector<Response> out;
  std::size_t pos = 0;
  while (pos < data.size()) {
    const auto end = data.find("\r\n\r\n", pos);
    if (end == std::string::npos) break;
    Response r;
    const auto status_line = data.substr(pos, data.find("\r\n", pos) - pos);
    if (status_line.size() < 12) break;
    r.status = std::stoi(status_line.substr(9, 3));
    std::size_t line = data.find("\r\n", pos) + 2;
    while (line < end) {
      const auto eol = data.find("\r\n", line);
      const auto h = data.substr(line, eol - line);
      const auto colon = h.find(':');
      std::string name = h.substr(0, colon);
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      r.headers[name] = h.substr(h.find_first_not_of(' ', colon + 1));
      line = eol + 2;
    }
    const bool is_head = out.size() < head.size() && head[out.size()];
    std::size_t length = 0;
    if (!is_head && r.headers.count("content-length")) length = std::stoul(r.headers["content-length"]);
    if (data.size() < end + 4 + length) break;
    r.body = data.substr(end + 4, length);
    pos = end + 4 + length;
    out.push_back(std::move(r));
  }
  return out;
}

std::function<bool(const std::string&)> responses(std::size_t n, const std::vector<bool>& head) {
  return [n, head](const std::string& d) { return parse_responses(d, head).size() >= n; };
}

Response exchange(int port, const std::string& request, const std::string& source) {
  const int fd = connect_from(source, port);
  send_all(fd, request);
  const auto got = read_until(fd, responses(1), std::chrono::milliseconds(3000));
  ::close(fd);
  const auto parsed = parse_responses(got.data);
  if (parsed.empty()) throw std::runtime_error("no response; got: " + got.data);
  return parsed.front();
}

TlsClient::TlsClient(int port, const std::string& cert_file, const std::string& key_file, int max_version,
                     SSL_SESSION* resume) {
  m_fd = connect_from("127.0.0.1", port);
  m_ctx = SSL_CTX_new(TLS_client_method());
  if (max_version) SSL_CTX_set_max_proto_version(m_ctx, max_version);
  if (!cert_file.empty()) {
    SSL_CTX_use_certificate_chain_file(m_ctx, cert_file.c_str());
    SSL_CTX_use_PrivateKey_file(m_ctx, key_file.c_str(), SSL_FILETYPE_PEM);
  }
  m_ssl = SSL_new(m_ctx);
  SSL_set_fd(m_ssl, m_fd);
  if (resume) SSL_set_session(m_ssl, resume);
  if (SSL_connect(m_ssl) != 1) {
    ERR_clear_error();
    SSL_free(m_ssl);  // the destructor does not run for a constructor that throws
    SSL_CTX_free(m_ctx);
    ::close(m_fd);
    throw std::runtime_error("TLS handshake failed");
  }
}

TlsClient::~TlsClient() {
  if (m_ssl) SSL_free(m_ssl);
  if (m_ctx) SSL_CTX_free(m_ctx);
  if (m_fd >= 0) ::close(m_fd);
}

void TlsClient::send(const std::string& data) {
  if (SSL_write(m_ssl, data.data(), static_cast<int>(data.size())) <= 0) throw std::runtime_error("TLS write");
}

Response TlsClient::exchange(const std::string& request) {
  send(request);
  std::string data;
  while (parse_responses(data).empty()) {
    char buf[16384];
    const int n = SSL_read(m_ssl, buf, sizeof buf);
    if (n <= 0) throw std::runtime_error("TLS read: connection ended; got: " + data);
    data.append(buf, static_cast<std::size_t>(n));
  }
  return parse_responses(data).front();
}

}  // namespace keyline::test
