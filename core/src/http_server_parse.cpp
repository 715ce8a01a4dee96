#include "http_server_parse.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <ctime>

#include "keyline/core/http.h"

namespace keyline::core::http::detail {
namespace {

Refusal refusal(int status, const char* slug, const char* title, std::string detail) {
  return Refusal{status, slug, title, std::move(detail)};
}

HeadResult refused(Refusal r) {
  HeadResult out;
  out.state = HeadState::Refused;
  out.refusal = std::move(r);
  return out;
}

// tchar (RFC 9110 section 5.6.2), ASCII only. NUL is tested first: strchr finds the terminator, so
// strchr(set, 0) is never null (fuzz_http_head found a header name of NUL bytes accepted that way).
bool is_tchar(unsigned char c) {
  if (c == 0 || c >= 0x80) return false;
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

bool is_token(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return is_tchar(static_cast<unsigned char>(c)); });
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}


// Splits the head into lines without their terminators (the final empty line is dropped).
std::vector<std::string_view> split_lines(std::string_view head) {
  std::vector<std::string_view> lines;
  while (!head.empty()) {
    const auto nl = head.find('\n');
    auto line = head.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) break;
    lines.push_back(line);
    head.remove_prefix(nl + 1);
  }
  return lines;
}

// A comma-separated header value holding `token` (case-insensitive), as Connection does.
bool has_token(const std::string& value, std::string_view token) {
  std::size_t start = 0;
  while (start <= value.size()) {
    auto end = value.find(',', start);
    if (end == std::string::npos) end = value.size();
    if (lower(trim(std::string_view(value).substr(start, end - start))) == token) return true;
    start = end + 1;
  }
  return false;
}

bool parse_request_line(std::string_view line, Request& req, bool& http10, Refusal& why) {
  const auto sp1 = line.find(' ');
  const auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
    why = refusal(400, "bad-request-line", "Bad request line", "the request line is not: method target version");
    return false;
  }
  const auto method = line.substr(0, sp1);
  auto target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  // absolute-form (RFC 9112 section 3.2.2: a server MUST accept it): the handler sees origin-form.
  for (const std::string_view scheme : {"http://", "https://"}) {
    if (target.size() > scheme.size() && lower(target.substr(0, scheme.size())) == scheme) {
      const auto slash = target.find('/', scheme.size());
      target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
    }
  }
  const auto version = line.substr(sp2 + 1);
  if (!is_token(method)) {
    why = refusal(400, "bad-request-line", "Bad request line", "the method is not a token");
    return false;
  }
  const bool origin_form = !target.empty() && target.front() == '/';
  const bool asterisk = target == "*" && method == "OPTIONS";
  const bool clean = std::all_of(target.begin(), target.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u < 0x7f;
  });
  if (!(origin_form || asterisk) || !clean) {
    why = refusal(400, "bad-request-line", "Bad request line", "the request target is not an origin-form path");
    return false;
  }
  if (version == "HTTP/1.0") {
    http10 = true;
  } else if (version != "HTTP/1.1") {
    why = refusal(505, "http-version", "HTTP version not supported", "only HTTP/1.0 and HTTP/1.1 are served");
    return false;
  }
  req.method = std::string(method);
  req.target = std::string(target);
  req.path = req.target.substr(0, req.target.find('?'));
  return true;
}

bool parse_header_line(std::string_view line, Request& req, Refusal& why) {
  // obs-fold (RFC 9112 section 5.2) and whitespace before the colon (section 5.1) are refused.
  const auto colon = line.find(':');
  if (line.front() == ' ' || line.front() == '\t' || colon == std::string_view::npos ||
      !is_token(line.substr(0, colon))) {
    why = refusal(400, "bad-header", "Bad header field", "a header line is not: name: value");
    return false;
  }
  const auto value = trim(line.substr(colon + 1));
  // field-vchar, SP and HTAB only (RFC 9110 section 5.5): no CTL, which could end or rewrite a log
  // line, and no obs-text, which no client of these servers sends and no handler would read as text.
  if (std::any_of(value.begin(), value.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return (u < 0x20 && u != '\t') || u >= 0x7f;
      })) {
    why = refusal(400, "bad-header", "Bad header field", "a header value holds a control character or a non-ASCII byte");
    return false;
  }
  req.headers.emplace_back(lower(line.substr(0, colon)), std::string(value));
  return true;
}

// RFC 9112 section 6.3: a Content-Length that is not one decimal number is unrecoverable framing.
bool parse_content_length(const Request& req, std::size_t max_body, std::size_t& length, Refusal& why) {
  const std::string* found = nullptr;
  for (const auto& [name, value] : req.headers) {
    if (name != "content-length") continue;
    if (found) {
      why = refusal(400, "bad-content-length", "Bad Content-Length", "more than one Content-Length header");
      return false;
    }
    found = &value;
  }
  length = 0;
  if (!found) return true;
  if (found->empty() || found->size() > 18 ||
      !std::all_of(found->begin(), found->end(), [](char c) { return c >= '0' && c <= '9'; })) {
    why = refusal(400, "bad-content-length", "Bad Content-Length", "Content-Length is not a decimal number");
    return false;
  }
  length = static_cast<std::size_t>(std::stoull(*found));
  if (length > max_body) {
    why = refusal(413, "body-too-large", "Request body too large",
                  "the body may be at most " + std::to_string(max_body) + " bytes");
    return false;
  }
  return true;
}

bool check_framing(const Request& req, bool http10, Refusal& why) {
  // Chunked request bodies are not served: every client of these servers knows its body's length,
  // and one framing only leaves no room for a proxy and this server to disagree (RFC 9112 11.2).
  if (req.header("transfer-encoding")) {
    why = refusal(411, "length-required", "Length required",
                  "Transfer-Encoding is not accepted in a request; send Content-Length");
    return false;
  }
  std::size_t hosts = 0;
  for (const auto& h : req.headers) hosts += h.first == "host" ? 1 : 0;
  // RFC 9112 section 3.2: a 1.1 request without Host, or with several, gets 400.
  if (hosts > 1 || (hosts == 0 && !http10)) {
    why = refusal(400, "bad-host", "Bad Host header", "an HTTP/1.1 request carries exactly one Host header");
    return false;
  }
  return true;
}

}  // namespace

std::size_t head_end(std::string_view buf, std::size_t scanned) {
  // An end found now starts at a LF at or after scanned - 2 (the end is at most 3 bytes long).
  const std::size_t from = scanned >= 2 ? scanned - 2 : 0;
  for (std::size_t i = buf.find('\n', from); i != std::string_view::npos; i = buf.find('\n', i + 1)) {
    if (i + 1 < buf.size() && buf[i + 1] == '\n') return i + 2;
    if (i + 2 < buf.size() && buf[i + 1] == '\r' && buf[i + 2] == '\n') return i + 3;
  }
  return std::string_view::npos;
}

std::size_t leading_empty_lines(std::string_view buf) {
  std::size_t n = 0;
  while (n + 1 < buf.size() && buf[n] == '\r' && buf[n + 1] == '\n') n += 2;
  return n;
}

namespace {

bool has_bare_lf(std::string_view head) {
  for (auto i = head.find('\n'); i != std::string_view::npos; i = head.find('\n', i + 1)) {
    if (i == 0 || head[i - 1] != '\r') return true;
  }
  return false;
}

}  // namespace

HeadResult parse_head(std::string_view buf, std::size_t max_head_bytes, std::size_t max_body_bytes,
                      std::size_t max_header_fields) {
  const auto end = head_end(buf, 0);
  if (end == std::string_view::npos || end > max_head_bytes) {
    if (buf.size() <= max_head_bytes) return {};
    return refused(refusal(431, "head-too-large", "Request header fields too large",
                           "the request line and headers may be at most " + std::to_string(max_head_bytes) +
                               " bytes"));
  }
  if (has_bare_lf(buf.substr(0, end))) {
    return refused(refusal(400, "bad-line-end", "Bad line end", "every line of a request head ends in CRLF"));
  }
  const auto lines = split_lines(buf.substr(0, end));
  if (lines.size() > max_header_fields + 1) {
    return refused(refusal(431, "too-many-header-fields", "Request header fields too large",
                           "a request may carry at most " + std::to_string(max_header_fields) + " header fields"));
  }
  HeadResult out;
  bool http10 = false;
  if (lines.empty() || !parse_request_line(lines.front(), out.request, http10, out.refusal)) {
    if (lines.empty()) out.refusal = refusal(400, "bad-request-line", "Bad request line", "empty request");
    out.state = HeadState::Refused;
    return out;
  }
  for (std::size_t i = 1; i < lines.size(); ++i) {
    if (!parse_header_line(lines[i], out.request, out.refusal)) {
      out.state = HeadState::Refused;
      return out;
    }
  }
  if (!check_framing(out.request, http10, out.refusal) ||
      !parse_content_length(out.request, max_body_bytes, out.content_length, out.refusal)) {
    out.state = HeadState::Refused;
    return out;
  }
  const auto* connection = out.request.header("connection");
  out.keep_alive = http10 ? (connection && has_token(*connection, "keep-alive"))
                          : !(connection && has_token(*connection, "close"));
  out.head_bytes = end;
  out.state = HeadState::Complete;
  return out;
}

std::string canonical_address(const std::string& text) {
  unsigned char bin[16];
  char out[INET6_ADDRSTRLEN] = "";
  if (inet_pton(AF_INET, text.c_str(), bin) == 1) return inet_ntop(AF_INET, bin, out, sizeof out) ? out : "";
  if (inet_pton(AF_INET6, text.c_str(), bin) != 1) return {};
  in6_addr a6;
  std::memcpy(&a6, bin, sizeof a6);
  // As a peer on a dual-stack socket is named (http_server_loop.cpp, peer_text).
  if (IN6_IS_ADDR_V4MAPPED(&a6)) return inet_ntop(AF_INET, bin + 12, out, sizeof out) ? out : "";
  return inet_ntop(AF_INET6, bin, out, sizeof out) ? out : "";
}

std::string client_address(const Request& request, const std::vector<std::string>& trusted) {
  const auto is_trusted = [&](const std::string& a) { return std::find(trusted.begin(), trusted.end(), a) != trusted.end(); };
  if (!is_trusted(request.peer_address)) return request.peer_address;
  // Every X-Forwarded-For field, in order, forms one list (RFC 9110 section 5.3).
  std::vector<std::string> hops;
  for (const auto& [name, value] : request.headers) {
    if (name != "x-forwarded-for") continue;
    std::size_t start = 0;
    while (start <= value.size()) {
      auto comma = value.find(',', start);
      if (comma == std::string::npos) comma = value.size();
      hops.emplace_back(trim(std::string_view(value).substr(start, comma - start)));
      start = comma + 1;
    }
  }
  for (auto it = hops.rbegin(); it != hops.rend(); ++it) {
    const auto hop = canonical_address(*it);
    if (!hop.empty() && is_trusted(hop)) continue;
    // A hop that is not an address was written by someone the proxy did not vouch for.
    return hop.empty() ? request.peer_address : hop;
  }
  return request.peer_address;
}

namespace {

std::string http_date() {
  char buf[64];
  std::tm tm{};
  const std::time_t now = std::time(nullptr);
  gmtime_r(&now, &tm);
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);  // IMF-fixdate, RFC 9110 5.6.7
  return buf;
}

bool clean_field(const std::string& s) {
  return std::none_of(s.begin(), s.end(), [](char c) { return c == '\r' || c == '\n' || c == '\0'; });
}

}  // namespace

std::string serialize_reply(const Reply& reply, bool keep_alive) {
  std::string out = "HTTP/1.1 " + std::to_string(reply.status) + " " + reason_phrase(reply.status) + "\r\n";
  out += "Date: " + http_date() + "\r\n";
  // RFC 9110 sections 8.6 and 15.4.5: no Content-Length (and no body) in a 1xx or 204, no body in a 304.
  const bool bodiless = reply.status == 204 || reply.status == 304 || (reply.status >= 100 && reply.status < 200);
  if (!bodiless) out += "Content-Length: " + std::to_string(reply.body.size()) + "\r\n";
  out += keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  if (!reply.content_type.empty() && clean_field(reply.content_type)) {
    out += "Content-Type: " + reply.content_type + "\r\n";
  }
  for (const auto& [name, value] : reply.headers) {
    if (!is_token(name) || !clean_field(value)) continue;
    const auto l = lower(name);
    if (l == "content-length" || l == "connection" || l == "date" || l == "transfer-encoding") continue;
    out += name + ": " + value + "\r\n";
  }
  out += "\r\n";
  if (!reply.head_only && !bodiless) out += reply.body;
  return out;
}

Reply problem_reply(const Refusal& r) {
  Reply reply;
  reply.status = r.status;
  reply.content_type = kProblemContentType;
  reply.body = problem_json(r.status, r.title, r.detail, "https://keyline.example/problems/" + r.slug);
  reply.close = true;
  reply.log_detail = r.detail;
  // A refusal of the connection layer (400, 408, 413, 431, 503 busy or connection-limit, ...) is about this
  // one request or this moment, never about the resource: a cache in front must not keep it (RFC 9111
  // section 5.2.2.5). Without it, a shared cache given heuristic freshness served one client's 431 to all.
  reply.headers.emplace_back("Cache-Control", "no-store");
  return reply;
}

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// A literal address cannot be rebound: DNS rebinding needs a name the attacker's DNS answers for.
bool is_ip_literal(const std::string& h) {
  in6_addr a6{};
  in_addr a4{};
  if (h.size() > 2 && h.front() == '[' && h.back() == ']')
    return ::inet_pton(AF_INET6, h.substr(1, h.size() - 2).c_str(), &a6) == 1;
  return ::inet_pton(AF_INET, h.c_str(), &a4) == 1;
}

}  // namespace

bool host_allowed(const std::string* host, std::uint16_t port, const std::vector<std::string>& names) {
  if (!host || host->empty()) return false;
  // RFC 9110 section 7.2: Host = uri-host [ ":" port ]; an IPv6 literal is bracketed, so the port
  // follows the last ':' only after a ']' or when there is no '['.
  std::string h = *host, p;
  const auto colon = h.rfind(':');
  if (colon != std::string::npos && (h.front() != '[' || h.find(']') < colon)) {
    p = h.substr(colon + 1);
    h.resize(colon);
  }
  if (!p.empty() && p != std::to_string(port)) return false;
  h = lower(h);
  if (h == "localhost" || is_ip_literal(h)) return true;
  return std::any_of(names.begin(), names.end(), [&h](const std::string& n) { return lower(n) == h; });
}

}  // namespace keyline::core::http::detail
