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
#include <Poco/StreamCopier.h>
#include <Poco/URI.h>

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <cctype>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
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
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
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

struct Client::Impl {
  ClientOptions opt;
  Poco::URI uri;
  bool https = false;
  Poco::Net::Context::Ptr context;
  std::unique_ptr<Poco::Net::HTTPClientSession> session;

  Poco::Net::HTTPClientSession& get_session() {
    if (session) return *session;
    if (https) {
      session = std::make_unique<Poco::Net::HTTPSClientSession>(uri.getHost(), uri.getPort(), context);
    } else {
      session = std::make_unique<Poco::Net::HTTPClientSession>(uri.getHost(), uri.getPort());
    }
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
      std::ostream& os = s.sendRequest(req);
      sent = true;
      if (body) os << *body;
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
      std::ostringstream ss;
      Poco::StreamCopier::copyStream(is, ss);
      out.body = ss.str();
      return out;
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
