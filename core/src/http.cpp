#include "keyline/core/http.h"

#include <Poco/Exception.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/HTTPSClientSession.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/SSLException.h>
#include <Poco/Net/SSLManager.h>
#include <Poco/Net/SecureStreamSocket.h>
#include <Poco/Net/SecureStreamSocketImpl.h>
#include <Poco/Net/SocketImpl.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/Net/StreamSocketImpl.h>
#include <Poco/URI.h>

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <cctype>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include "keyline/core/error.h"

namespace keyline::core::http {

std::string json_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 8);
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out;
}

const char* reason_phrase(int status) noexcept {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

std::string problem_json(int status, const std::string& title, const std::string& detail, const std::string& type,
                         const std::vector<std::pair<std::string, std::string>>& extra) {
  std::string out = "{\"type\":\"" + json_escape(type) + "\",\"title\":\"" + json_escape(title) +
                    "\",\"status\":" + std::to_string(status);
  if (!detail.empty()) out += ",\"detail\":\"" + json_escape(detail) + "\"";
  for (const auto& [k, v] : extra) out += ",\"" + json_escape(k) + "\":\"" + json_escape(v) + "\"";
  out += "}";
  return out;
}

std::string Response::header(const std::string& lower_name) const {
  const auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

namespace {

using SteadyClock = std::chrono::steady_clock;
using Deadline = std::optional<SteadyClock::time_point>;

// Before each send and recv, the socket's timeouts shrink to what is left of the request's deadline:
// the session's own timeout bounds each recv only, so a server that trickles a byte within it would
// hold the client forever. Poco reads the status line, the headers and the body, plain and TLS, through
// SocketImpl::receiveBytes, and with a lazy handshake the TLS handshake runs inside the first
// sendBytes: these two see every byte of the exchange.
void shrink_to_deadline(Poco::Net::SocketImpl& socket, const Deadline& deadline) {
  if (!deadline) return;
  const auto left = std::chrono::duration_cast<std::chrono::microseconds>(*deadline - SteadyClock::now());
  if (left.count() <= 0) throw Poco::TimeoutException("the answer did not arrive in time");
  socket.setReceiveTimeout(Poco::Timespan(left.count()));
  socket.setSendTimeout(Poco::Timespan(left.count()));
}

template <class Base>
class DeadlineImpl : public Base {
 public:
  template <class... Args>
  explicit DeadlineImpl(const Deadline& deadline, Args&&... args)
      : Base(std::forward<Args>(args)...), m_deadline(deadline) {}
  using Base::receiveBytes;
  using Base::sendBytes;
  int receiveBytes(void* buffer, int length, int flags) override {
    shrink_to_deadline(*this, m_deadline);
    return Base::receiveBytes(buffer, length, flags);
  }
  int sendBytes(const void* buffer, int length, int flags) override {
    shrink_to_deadline(*this, m_deadline);
    return Base::sendBytes(buffer, length, flags);
  }

 private:
  const Deadline& m_deadline;
};

// The socket classes take a custom impl only through their protected constructors.
struct DeadlineSocket : Poco::Net::StreamSocket {
  explicit DeadlineSocket(const Deadline& d)
      : Poco::Net::StreamSocket(new DeadlineImpl<Poco::Net::StreamSocketImpl>(d)) {}
};
struct DeadlineSecureSocket : Poco::Net::SecureStreamSocket {
  DeadlineSecureSocket(const Deadline& d, Poco::Net::Context::Ptr c)
      : Poco::Net::SecureStreamSocket(make_impl(d, std::move(c))) {}
  static Poco::Net::SocketImpl* make_impl(const Deadline& d, Poco::Net::Context::Ptr c) {
    auto* impl = new DeadlineImpl<Poco::Net::SecureStreamSocketImpl>(d, std::move(c));
    impl->setLazyHandshake(true);  // the handshake then runs under the deadline (first sendBytes)
    return impl;
  }
};

// Raised inside request() so that the connection is dropped like on any other failure.
class BodyTooLarge : public std::exception {};

// length: the Content-Length, -1 without one.
std::string read_body(std::istream& is, Poco::Net::HTTPClientSession& s, std::size_t max_body, Poco::Int64 length) {
  std::string body;
  char buf[16384];
  while (is) {
    is.read(buf, sizeof buf);
    const auto n = static_cast<std::size_t>(is.gcount());
    if (body.size() + n > max_body) throw BodyTooLarge();
    body.append(buf, n);
  }
  if (const Poco::Exception* e = s.networkException()) e->rethrow();
  // Poco ends a fixed-length body silently when the peer closes early.
  if (is.bad() || (length >= 0 && body.size() != static_cast<std::size_t>(length)))
    throw Poco::IOException("the answer broke off");
  return body;
}

}  // namespace

struct Client::Impl {
  ClientOptions opt;
  Poco::URI uri;
  bool https = false;
  Poco::Net::Context::Ptr context;
  Deadline deadline;  // of the request under way (DeadlineImpl); unset between requests
  std::unique_ptr<Poco::Net::HTTPClientSession> session;

  Poco::Net::HTTPClientSession& get_session() {
    if (session) return *session;
    if (https) {
      session = std::make_unique<Poco::Net::HTTPSClientSession>(DeadlineSecureSocket(deadline, context));
    } else {
      session = std::make_unique<Poco::Net::HTTPClientSession>(DeadlineSocket(deadline));
    }
    session->setHost(uri.getHost());
    session->setPort(uri.getPort());
    session->setKeepAlive(true);
    const auto to_span = [](std::chrono::milliseconds ms) { return Poco::Timespan(ms.count() * 1000); };
    session->setTimeout(to_span(opt.connect_timeout), to_span(opt.io_timeout), to_span(opt.io_timeout));
    return *session;
  }
};

namespace {
void require_readable(const std::string& path, const char* what) {
  std::ifstream f(path);
  if (!f) throw ConfigError(ErrorCode::Config, std::string("cannot read ") + what + " file " + path);
}
}  // namespace

Client::Client(ClientOptions options) : m_impl(std::make_unique<Impl>()) {
  static std::once_flag ssl_once;
  std::call_once(ssl_once, [] { Poco::Net::initializeSSL(); });
  m_impl->opt = std::move(options);
  try {
    m_impl->uri = Poco::URI(m_impl->opt.base_url);
  } catch (const Poco::Exception&) {
    throw ConfigError(ErrorCode::Config, "bad server URL: " + m_impl->opt.base_url);
  }
  const std::string scheme = m_impl->uri.getScheme();
  if (scheme != "https" && scheme != "http")
    throw ConfigError(ErrorCode::Config, "server URL must be https:// or http://: " + m_impl->opt.base_url);
  m_impl->https = scheme == "https";
  if (m_impl->https && m_impl->opt.context) {
    m_impl->context = m_impl->opt.context;
  } else if (m_impl->https) {
    if (m_impl->opt.ca_file.empty()) throw ConfigError(ErrorCode::Config, "https needs a CA file (--ca)");
    require_readable(m_impl->opt.ca_file, "CA");
    Poco::Net::Context::Params p;
    p.caLocation = m_impl->opt.ca_file;
    p.loadDefaultCAs = false;  // only the private CA may vouch for our servers
    p.verificationMode = Poco::Net::Context::VERIFY_STRICT;
    if (!m_impl->opt.cert_file.empty()) {
      require_readable(m_impl->opt.cert_file, "client certificate");
      require_readable(m_impl->opt.key_file, "client key");
      p.certificateFile = m_impl->opt.cert_file;
      p.privateKeyFile = m_impl->opt.key_file;
    }
    try {
      m_impl->context = new Poco::Net::Context(Poco::Net::Context::TLS_CLIENT_USE, p);
      m_impl->context->requireMinimumProtocol(Poco::Net::Context::PROTO_TLSV1_2);
      // The --ca file is the trust anchor even when it is a subordinate CA (the service CA sits under
      // the manufacturer root): accept a chain that ends at any certificate of that file, as curl does.
      X509_STORE_set_flags(SSL_CTX_get_cert_store(m_impl->context->sslContext()), X509_V_FLAG_PARTIAL_CHAIN);
    } catch (const Poco::Exception& e) {
      throw ConfigError(ErrorCode::Config, "TLS client setup failed: " + e.displayText());
    }
  }
}

Client::~Client() = default;

Response Client::get(const std::string& path, const std::map<std::string, std::string>& headers) {
  return request(Poco::Net::HTTPRequest::HTTP_GET, path, nullptr, "", headers);
}

Response Client::post(const std::string& path, const std::string& body, const std::string& content_type,
                      const std::map<std::string, std::string>& headers) {
  return request(Poco::Net::HTTPRequest::HTTP_POST, path, &body, content_type, headers);
}

Response Client::request(const std::string& method, const std::string& path, const std::string* body,
                         const std::string& content_type, const std::map<std::string, std::string>& headers) {
  auto delay = m_impl->opt.backoff;
  const int attempts = m_impl->opt.connect_attempts < 1 ? 1 : m_impl->opt.connect_attempts;
  for (int attempt = 1;; ++attempt) {
    auto& s = m_impl->get_session();
    bool sent = false;
    try {
      Poco::Net::HTTPRequest req(method, path, Poco::Net::HTTPMessage::HTTP_1_1);
      for (const auto& [k, v] : headers) req.set(k, v);
      if (body) {
        req.setContentType(content_type);
        req.setContentLength(static_cast<std::streamsize>(body->size()));
      }
      // Connect and handshake within their own timeout, the request and the whole answer within io_timeout.
      m_impl->deadline = SteadyClock::now() + m_impl->opt.connect_timeout + m_impl->opt.io_timeout;
      std::ostream& os = s.sendRequest(req);
      sent = true;
      if (body) os << *body << std::flush;
      m_impl->deadline = SteadyClock::now() + m_impl->opt.io_timeout;
      Poco::Net::HTTPResponse resp;
      std::istream& is = s.receiveResponse(resp);
      Response out;
      out.status = static_cast<int>(resp.getStatus());
      out.content_type = resp.getContentType();
      for (const auto& [k, v] : resp) {
        std::string name = k;
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        out.headers[name] = v;
      }
      if (resp.hasContentLength() && resp.getContentLength64() > static_cast<Poco::Int64>(m_impl->opt.max_body))
        throw BodyTooLarge();  // refused before reading a byte of it
      out.body = read_body(is, s, m_impl->opt.max_body, resp.hasContentLength() ? resp.getContentLength64() : -1);
      m_impl->deadline.reset();
      return out;
    } catch (const BodyTooLarge&) {
      m_impl->deadline.reset();
      m_impl->session.reset();  // the rest of the body is never read: this connection is spent
      throw Error(ErrorCode::Http, "the answer of " + m_impl->opt.base_url + " exceeds " +
                                       std::to_string(m_impl->opt.max_body) + " bytes");
    } catch (const Poco::TimeoutException&) {
      m_impl->session.reset();
      if (sent || attempt >= attempts) throw Error(ErrorCode::Timeout, "timeout talking to " + m_impl->opt.base_url);
    } catch (const Poco::Net::ConnectionRefusedException&) {
      m_impl->session.reset();
      if (attempt >= attempts) throw IoError(ErrorCode::Network, "connection refused by " + m_impl->opt.base_url);
    } catch (const Poco::Net::SSLException& e) {
      // A failed handshake (wrong CA, wrong host name) will not heal by retrying.
      m_impl->session.reset();
      throw IoError(ErrorCode::Network, "TLS failure with " + m_impl->opt.base_url + ": " + e.displayText());
    } catch (const Poco::Exception& e) {
      m_impl->session.reset();
      if (sent || attempt >= attempts)
        throw IoError(ErrorCode::Network, "request to " + m_impl->opt.base_url + " failed: " + e.displayText());
    }
    std::this_thread::sleep_for(delay);
    delay *= 2;
  }
}

}  // namespace keyline::core::http
