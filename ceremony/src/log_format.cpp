// The canonical form of a log line: a flat JSON object whose members are all strings except "seq"
// (a decimal integer), in a fixed order, no whitespace, strings escaped only where RFC 8259 section 7
// requires (quote, backslash, control characters as \u00XX). A line is accepted only when re-encoding
// what was parsed gives back the very same bytes, so "changed but equivalent" JSON is a changed line.
#include <cstdio>

#include <botan/hash.h>
#include <botan/hex.h>
#include <botan/x509_key.h>

#include "keyline/ceremony/log.h"

namespace keyline::ceremony {

namespace {

void put_string(std::string& out, const std::string& s) {
  out += '"';
  for (const unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
}

void put_member(std::string& out, const std::string& name, const std::string& value) {
  out += ',';
  put_string(out, name);
  out += ':';
  put_string(out, value);
}

// A cursor over one line; every get_* returns false on anything it does not expect.
struct Reader {
  const std::string& s;
  std::size_t i = 0;

  bool eat(char c) {
    if (i >= s.size() || s[i] != c) return false;
    ++i;
    return true;
  }
  int hex_digit(char c) const {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  }
  bool get_escape(std::string& out) {
    if (i >= s.size()) return false;
    const char c = s[i++];
    if (c == '"' || c == '\\') {
      out += c;
      return true;
    }
    if (c != 'u' || i + 4 > s.size()) return false;
    int v = 0;
    for (int k = 0; k < 4; ++k) {
      const int d = hex_digit(s[i++]);
      if (d < 0) return false;
      v = v * 16 + d;
    }
    if (v >= 0x20) return false;  // the canonical form escapes control characters only
    out += static_cast<char>(v);
    return true;
  }
  bool get_string(std::string& out) {
    if (!eat('"')) return false;
    out.clear();
    while (i < s.size()) {
      const unsigned char c = static_cast<unsigned char>(s[i++]);
      if (c == '"') return true;
      if (c < 0x20) return false;
      if (c == '\\') {
        if (!get_escape(out)) return false;
      } else {
        out += static_cast<char>(c);
      }
    }
    return false;
  }
  bool get_uint(std::uint64_t& v) {
    const std::size_t start = i;
    v = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      if (v > (UINT64_MAX - 9) / 10) return false;
      v = v * 10 + static_cast<std::uint64_t>(s[i++] - '0');
    }
    return i > start && !(i - start > 1 && s[start] == '0');
  }
  bool get_named(const char* name, std::string& value) {
    std::string n;
    return eat(',') && get_string(n) && n == name && eat(':') && get_string(value);
  }
};

bool parse_members(Reader& r, LogEntry& e) {
  std::string n;
  if (!r.eat('{') || !r.get_string(n) || n != "seq" || !r.eat(':') || !r.get_uint(e.seq)) return false;
  if (!r.get_named("time", e.time) || !r.get_named("prev", e.prev) || !r.get_named("key", e.key) ||
      !r.get_named("op", e.op) || !r.get_named("phase", e.phase))
    return false;
  while (r.i < r.s.size() && r.s[r.i] == ',') {
    std::string name, value;
    if (!r.eat(',') || !r.get_string(name) || !r.eat(':') || !r.get_string(value)) return false;
    if (name == "sig") {
      e.sig = value;
      return r.eat('}') && r.i == r.s.size();
    }
    e.fields.emplace_back(std::move(name), std::move(value));
  }
  return false;  // no "sig" member last
}

}  // namespace

std::string key_id(const Botan::Public_Key& key) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  return Botan::hex_encode(h->process(Botan::X509::BER_encode(key)), false);
}

std::string genesis_hash(const std::string& root_key_id) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  return Botan::hex_encode(h->process("keyline ceremony log v1 genesis: root key " + root_key_id), false);
}

std::string canonical_body(const LogEntry& e) {
  std::string out = "{\"seq\":" + std::to_string(e.seq);
  put_member(out, "time", e.time);
  put_member(out, "prev", e.prev);
  put_member(out, "key", e.key);
  put_member(out, "op", e.op);
  put_member(out, "phase", e.phase);
  for (const auto& [name, value] : e.fields) put_member(out, name, value);
  out += '}';
  return out;
}

std::string to_line(const LogEntry& e) {
  std::string out = canonical_body(e);
  out.pop_back();
  put_member(out, "sig", e.sig);
  out += '}';
  return out;
}

std::optional<LogEntry> parse_line(const std::string& line) {
  LogEntry e;
  Reader r{line};
  if (!parse_members(r, e)) return std::nullopt;
  for (const auto& f : e.fields)
    if (f.first == "seq" || f.first == "time" || f.first == "prev" || f.first == "key" || f.first == "op" ||
        f.first == "phase" || f.first == "sig")
      return std::nullopt;  // a second member of a reserved name would read differently elsewhere
  if (to_line(e) != line) return std::nullopt;
  return e;
}

}  // namespace keyline::ceremony
