// The request-head parser of core::http::Server (private to core). RFC 9112 sections 2-6, strict
// where leniency lets two parsers disagree about where a request ends (request smuggling).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "keyline/core/http_server.h"

namespace keyline::core::http::detail {

// Why a request was refused before any handler saw it.
struct Refusal {
  int status = 400;
  std::string slug;    // problem type: https://keyline.example/problems/<slug>
  std::string title;
  std::string detail;  // sent: says what was wrong in the request, never anything of the server
};

enum class HeadState { Incomplete, Complete, Refused };

struct HeadResult {
  HeadState state = HeadState::Incomplete;
  std::size_t head_bytes = 0;      // the head, its final empty line included (Complete)
  std::size_t content_length = 0;  // Complete
  bool keep_alive = false;         // what the request asks for (HTTP version and Connection)
  Request request;                 // method, target, path, headers (Complete)
  Refusal refusal;                 // Refused
};

// Where the head at the start of buf ends (one past its empty line), or npos. The end is found
// with or without the CRs, so that a head with bare LFs is found, and refused, as soon as it ends
// (parse_head). `scanned`:
// how much of buf an earlier call searched in vain, so that a head arriving a byte at a time is
// searched once in all, not once per byte.
std::size_t head_end(std::string_view buf, std::size_t scanned);

// Parses a request head at the start of `buf`. Incomplete while no empty line ended it and it is
// still within max_head_bytes. Every line must end in CRLF: RFC 9112 section 2.2 lets a recipient
// accept a bare LF, but a proxy that does not would see one header where this server sees two
// (docs/decisions.md, "The servers' own acceptor").
HeadResult parse_head(std::string_view buf, std::size_t max_head_bytes, std::size_t max_body_bytes,
                      std::size_t max_header_fields);

// Number of bytes of empty lines (CRLF) before a request line, which RFC 9112 section 2.2 lets a
// server ignore (some clients send one after a POST body). A bare LF is not skipped: it is part of
// the head, which is then refused.
std::size_t leading_empty_lines(std::string_view buf);

// An IPv4 or IPv6 address in its one canonical text (inet_ntop; an IPv4-mapped IPv6 address as
// IPv4, as peers are named), or "" when `text` is not an address.
std::string canonical_address(const std::string& text);

// The client behind a trusted proxy: the rightmost X-Forwarded-For entry that is not itself a
// trusted proxy, in canonical text; the peer when there is no usable entry. `trusted_proxies` are
// canonical (canonical_address), as peer addresses are.
std::string client_address(const Request& request, const std::vector<std::string>& trusted_proxies);

// The reply as bytes on the wire: status line, Date, Content-Length, Connection, the reply's own
// headers (those with CR, LF or NUL dropped), then the body unless head_only.
std::string serialize_reply(const Reply& reply, bool keep_alive);

// A problem document reply for a refusal; close is set.
Reply problem_reply(const Refusal& refusal);

// ServerOptions::check_host: `host` (the Host header, nullptr when absent) names this listener: an
// IPv4 literal, a bracketed IPv6 literal, "localhost" or one of `names` (case-insensitive), with `port`
// or no port.
bool host_allowed(const std::string* host, std::uint16_t port, const std::vector<std::string>& names);

}  // namespace keyline::core::http::detail
