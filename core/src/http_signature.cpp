#include "keyline/core/http_signature.h"

#include <algorithm>
#include <cctype>
#include <memory>

#include <botan/ecdsa.h>
#include <botan/ed25519.h>
#include <botan/hash.h>
#include <botan/pubkey.h>

#include "keyline/core/error.h"

namespace keyline::core::http_signature {
namespace {

[[noreturn]] void bad(const std::string& what) { throw FormatError(ErrorCode::BadSignatureField, what); }

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// ---- RFC 8941 structured fields: the subset Signature-Input, Signature and Content-Digest use ----
struct Item {
  enum class Type { Integer, Decimal, String, Token, Bytes, Boolean } type = Type::Integer;
  std::int64_t integer = 0;
  std::string text;  // string, token, decimal text
  Bytes bytes;
  bool boolean = false;
};
using SfParams = std::vector<std::pair<std::string, Item>>;
struct Member {
  bool is_inner_list = false;
  Item item;
  std::vector<std::pair<Item, SfParams>> inner;
  SfParams params;
};
using Dictionary = std::vector<std::pair<std::string, Member>>;

class Parser {
 public:
  explicit Parser(const std::string& s) : m_s(s) {}

  // RFC 8941 section 4.2.2.
  Dictionary dictionary() {
    Dictionary out;
    skip_sp();
    if (at_end()) return out;
    for (;;) {
      std::string key = parse_key();
      Member m;
      if (peek() == '=') {
        ++m_i;
        m = member();
      } else {
        m.item.type = Item::Type::Boolean;
        m.item.boolean = true;
        m.params = params();
      }
      auto it = std::find_if(out.begin(), out.end(), [&](const auto& p) { return p.first == key; });
      if (it != out.end()) it->second = std::move(m);  // section 4.2.2: the last one wins
      else out.emplace_back(std::move(key), std::move(m));
      skip_ows();
      if (at_end()) return out;
      if (next() != ',') bad("dictionary: expected ','");
      skip_ows();
      if (at_end()) bad("dictionary: trailing ','");
    }
  }

 private:
  Member member() {
    Member m;
    if (peek() == '(') {
      m.is_inner_list = true;
      ++m_i;
      for (;;) {
        skip_sp();
        if (peek() == ')') { ++m_i; break; }
        Item it = bare_item();
        m.inner.emplace_back(std::move(it), params());
        if (peek() != ' ' && peek() != ')') bad("inner list: expected ' ' or ')'");
      }
    } else {
      m.item = bare_item();
    }
    m.params = params();
    return m;
  }

  SfParams params() {
    SfParams out;
    while (peek() == ';') {
      ++m_i;
      skip_sp();
      std::string key = parse_key();
      Item value;
      value.type = Item::Type::Boolean;
      value.boolean = true;
      if (peek() == '=') { ++m_i; value = bare_item(); }
      auto it = std::find_if(out.begin(), out.end(), [&](const auto& p) { return p.first == key; });
      if (it != out.end()) it->second = std::move(value);
      else out.emplace_back(std::move(key), std::move(value));
    }
    return out;
  }

  std::string parse_key() {
    char c = peek();
    if (!(std::islower(static_cast<unsigned char>(c)) || c == '*')) bad("key: bad first character");
    std::string k;
    while (!at_end()) {
      c = peek();
      if (std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '_' ||
          c == '-' || c == '.' || c == '*') {
        k += c;
        ++m_i;
      } else {
        break;
      }
    }
    return k;
  }

  Item bare_item() {
    char c = peek();
    if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) return number();
    if (c == '"') return string();
    if (c == ':') return byte_sequence();
    if (c == '?') return boolean();
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '*') return token();
    bad("bare item: unexpected character");
  }

  Item number() {  // section 4.2.4
    Item it;
    bool neg = false;
    if (peek() == '-') { neg = true; ++m_i; }
    std::string digits;
    bool decimal = false;
    while (!at_end()) {
      char c = peek();
      if (std::isdigit(static_cast<unsigned char>(c))) digits += c;
      else if (c == '.' && !decimal) { if (digits.size() > 12) bad("decimal: too long"); decimal = true; digits += c; }
      else break;
      ++m_i;
      if ((!decimal && digits.size() > 15) || digits.size() > 16) bad("number: too long");
    }
    if (digits.empty() || digits.front() == '.' || digits.back() == '.') bad("number: no digits");
    if (decimal) {
      if (digits.size() - digits.find('.') - 1 > 3) bad("decimal: too many fraction digits");
      it.type = Item::Type::Decimal;
      it.text = (neg ? "-" : "") + digits;
      return it;
    }
    it.integer = std::stoll(digits) * (neg ? -1 : 1);
    return it;
  }

  Item string() {  // section 4.2.5
    Item it;
    it.type = Item::Type::String;
    ++m_i;
    for (;;) {
      if (at_end()) bad("string: unterminated");
      char c = next();
      if (c == '\\') {
        if (at_end()) bad("string: dangling escape");
        char e = next();
        if (e != '"' && e != '\\') bad("string: bad escape");
        it.text += e;
      } else if (c == '"') {
        return it;
      } else if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) {
        bad("string: character out of range");
      } else {
        it.text += c;
      }
    }
  }

  Item token() {  // section 4.2.6
    Item it;
    it.type = Item::Type::Token;
    static const std::string extra = "!#$%&'*+-.^_`|~:/";
    while (!at_end()) {
      char c = peek();
      if (std::isalnum(static_cast<unsigned char>(c)) || extra.find(c) != std::string::npos) { it.text += c; ++m_i; }
      else break;
    }
    return it;
  }

  Item byte_sequence() {  // section 4.2.7
    Item it;
    it.type = Item::Type::Bytes;
    ++m_i;
    auto end = m_s.find(':', m_i);
    if (end == std::string::npos) bad("byte sequence: unterminated");
    try {
      it.bytes = from_base64(std::string_view(m_s).substr(m_i, end - m_i));
    } catch (const FormatError&) {
      bad("byte sequence: bad base64");
    }
    m_i = end + 1;
    return it;
  }

  Item boolean() {  // section 4.2.8
    Item it;
    it.type = Item::Type::Boolean;
    ++m_i;
    char c = at_end() ? '\0' : next();
    if (c != '0' && c != '1') bad("boolean: expected ?0 or ?1");
    it.boolean = c == '1';
    return it;
  }

  void skip_sp() { while (!at_end() && m_s[m_i] == ' ') ++m_i; }
  void skip_ows() { while (!at_end() && (m_s[m_i] == ' ' || m_s[m_i] == '\t')) ++m_i; }
  bool at_end() const { return m_i >= m_s.size(); }
  char peek() const { return at_end() ? '\0' : m_s[m_i]; }
  char next() { return m_s[m_i++]; }

  const std::string& m_s;
  std::size_t m_i = 0;
};

Dictionary parse_dictionary(const std::string& value) {
  // Section 4.2: leading and trailing SP are discarded.
  std::size_t b = value.find_first_not_of(' ');
  std::size_t e = value.find_last_not_of(' ');
  std::string trimmed = b == std::string::npos ? "" : value.substr(b, e - b + 1);
  return Parser(trimmed).dictionary();
}

Member find_member(const Dictionary& d, const std::string& label) {
  for (const auto& [k, m] : d)
    if (k == label) return m;
  bad("no member '" + label + "'");
}

std::string serialize_string(const std::string& s) {  // RFC 8941 section 4.1.6
  std::string out = "\"";
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) bad("string: character out of range");
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string serialize_component(const Component& c) { return serialize_string(c.name) + (c.req ? ";req" : ""); }

std::string trim_ows(const std::string& s) {
  std::size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

std::string derived_value(const std::string& name, const Message& m) {
  if (name == "@status") {
    if (!m.is_response || m.status < 100 || m.status > 999) bad("@status: not a response");
    return std::to_string(m.status);
  }
  if (m.is_response) bad(name + ": a response has no " + name);
  if (name == "@method") return m.method;
  if (name == "@path") return m.path.empty() ? "/" : m.path;
  if (name == "@query") return "?" + m.query.value_or("");  // section 2.2.7: "?" alone when none
  if (name == "@authority") return lower(m.authority);
  if (name == "@scheme") return lower(m.scheme);
  if (name == "@target-uri")
    return lower(m.scheme) + "://" + lower(m.authority) + (m.path.empty() ? "/" : m.path) +
           (m.query ? "?" + *m.query : "");
  bad("unsupported derived component " + name);
}

std::string component_value(const Component& c, const Message& message, const Message* request) {
  const Message* source = &message;
  if (c.req) {
    if (request == nullptr || !message.is_response) bad(c.name + ";req: no request");
    source = request;
  }
  if (!c.name.empty() && c.name[0] == '@') return derived_value(c.name, *source);
  if (c.name.empty() || c.name != lower(c.name)) bad("component names are lower case");
  auto v = header_value(source->headers, c.name);
  if (!v) bad("component " + c.name + " is absent");
  return *v;
}

std::string params_suffix(const Params& p) {
  std::vector<std::string> order = p.order;
  if (order.empty()) order = {"created", "expires", "nonce", "alg", "keyid", "tag"};
  std::string out;
  for (const auto& name : order) {
    if (name == "created" && p.created) out += ";created=" + std::to_string(*p.created);
    else if (name == "expires" && p.expires) out += ";expires=" + std::to_string(*p.expires);
    else if (name == "keyid" && p.keyid) out += ";keyid=" + serialize_string(*p.keyid);
    else if (name == "alg" && p.alg) out += ";alg=" + serialize_string(*p.alg);
    else if (name == "nonce" && p.nonce) out += ";nonce=" + serialize_string(*p.nonce);
    else if (name == "tag" && p.tag) out += ";tag=" + serialize_string(*p.tag);
  }
  return out;
}

Component to_component(const Item& item, const SfParams& params) {
  if (item.type != Item::Type::String) bad("component identifier must be a string");
  Component c{item.text, false};
  for (const auto& [k, v] : params) {
    if (k != "req" || v.type != Item::Type::Boolean || !v.boolean) bad("unsupported component parameter " + k);
    c.req = true;
  }
  return c;
}

void set_param(Params& p, const std::string& k, const Item& v) {
  auto want = [&](Item::Type t) { if (v.type != t) bad("parameter " + k + " has the wrong type"); };
  if (k == "created" || k == "expires") {
    want(Item::Type::Integer);
    (k == "created" ? p.created : p.expires) = v.integer;
  } else if (k == "keyid" || k == "alg" || k == "nonce" || k == "tag") {
    want(Item::Type::String);
    (k == "keyid" ? p.keyid : k == "alg" ? p.alg : k == "nonce" ? p.nonce : p.tag) = v.text;
  } else {
    return;  // section 2.3: unknown parameters are not an error here; they are not re-serialized either
  }
  p.order.push_back(k);
}

Bytes sha256(const std::uint8_t* data, std::size_t len) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(data, len);
  return Botan::unlock(h->final());
}

std::string emsa_for(Algorithm alg) { return alg == Algorithm::Ed25519 ? "Pure" : "EMSA1(SHA-256)"; }

}  // namespace

std::string content_digest_sha256(const std::uint8_t* body, std::size_t len) {
  return "sha-256=:" + to_base64(sha256(body, len)) + ":";
}

void verify_content_digest(const std::string& field_value, const std::uint8_t* body, std::size_t len) {
  const Member m = find_member(parse_dictionary(field_value), "sha-256");
  if (m.is_inner_list || m.item.type != Item::Type::Bytes) bad("Content-Digest sha-256 is not a byte sequence");
  if (m.item.bytes != sha256(body, len)) throw CryptoError(ErrorCode::Crypto, "Content-Digest does not match the body");
}

std::optional<std::string> header_value(const Headers& headers, const std::string& name) {
  std::optional<std::string> out;
  const std::string want = lower(name);
  for (const auto& [k, v] : headers) {
    if (lower(k) != want) continue;
    out = out ? *out + ", " + trim_ows(v) : trim_ows(v);
  }
  return out;
}

std::string serialize_params(const Params& params) {
  std::string out = "(";
  for (std::size_t i = 0; i < params.components.size(); ++i)
    out += (i ? " " : "") + serialize_component(params.components[i]);
  return out + ")" + params_suffix(params);
}

std::string signature_base(const Params& params, const Message& message, const Message* request) {
  std::string base;
  for (std::size_t i = 0; i < params.components.size(); ++i) {
    const Component& c = params.components[i];
    if (c.name == "@signature-params") bad("@signature-params is not a component");  // section 2.3
    for (std::size_t j = 0; j < i; ++j)
      if (params.components[j] == c) bad("component " + c.name + " listed twice");  // section 2.5
    std::string value = component_value(c, message, request);
    if (value.find_first_of("\r\n") != std::string::npos) bad("component " + c.name + " holds a line break");
    base += serialize_component(c) + ": " + value + "\n";
  }
  return base + "\"@signature-params\": " + serialize_params(params);
}

Params parse_signature_input(const std::string& field_value, const std::string& label) {
  const Member m = find_member(parse_dictionary(field_value), label);
  if (!m.is_inner_list) bad("Signature-Input member is not an inner list");
  Params p;
  for (const auto& [item, params] : m.inner) p.components.push_back(to_component(item, params));
  for (const auto& [k, v] : m.params) set_param(p, k, v);
  return p;
}

Bytes parse_signature(const std::string& field_value, const std::string& label) {
  const Member m = find_member(parse_dictionary(field_value), label);
  if (m.is_inner_list || m.item.type != Item::Type::Bytes) bad("Signature member is not a byte sequence");
  return m.item.bytes;
}

std::vector<std::string> dictionary_labels(const std::string& field_value) {
  std::vector<std::string> out;
  for (const auto& [k, m] : parse_dictionary(field_value)) out.push_back(k);
  return out;
}

std::string algorithm_name(Algorithm alg) { return alg == Algorithm::Ed25519 ? "ed25519" : "ecdsa-p256-sha256"; }

Algorithm algorithm_from_name(const std::string& name) {
  if (name == "ecdsa-p256-sha256") return Algorithm::EcdsaP256Sha256;
  if (name == "ed25519") return Algorithm::Ed25519;
  bad("unsupported alg '" + name + "'");
}

Signer botan_signer(const Botan::Private_Key& key, Algorithm alg, Botan::RandomNumberGenerator& rng) {
  // IEEE 1363 format is the raw r || s that section 3.3.4 asks for.
  auto signer = std::make_shared<Botan::PK_Signer>(key, rng, emsa_for(alg), Botan::IEEE_1363);
  return [signer, &rng](const Bytes& base) { return signer->sign_message(base, rng); };
}

bool verify_signature(const Botan::Public_Key& key, Algorithm alg, const Bytes& base, const Bytes& signature) {
  const std::string algo = key.algo_name();
  if ((alg == Algorithm::Ed25519) != (algo == "Ed25519")) return false;
  if (alg == Algorithm::EcdsaP256Sha256 && (algo != "ECDSA" || signature.size() != 64)) return false;
  if (alg == Algorithm::Ed25519 && signature.size() != 64) return false;
  try {
    Botan::PK_Verifier verifier(key, emsa_for(alg), Botan::IEEE_1363);
    return verifier.verify_message(base, signature);
  } catch (const std::exception&) {
    return false;
  }
}

SignatureFields sign_message(const std::string& label, const Params& params, const Message& message,
                             const Message* request, const Signer& signer) {
  const std::string base = signature_base(params, message, request);
  Bytes sig = signer(Bytes(base.begin(), base.end()));
  return {label + "=" + serialize_params(params), label + "=:" + to_base64(sig) + ":"};
}

Params verify_message(const std::string& label, const Message& message, const Message* request,
                      const Botan::Public_Key& key, Algorithm expected_alg) {
  auto input = header_value(message.headers, kSignatureInputHeader);
  auto sig_field = header_value(message.headers, kSignatureHeader);
  if (!input || !sig_field) bad("Signature-Input or Signature missing");
  Params p = parse_signature_input(*input, label);
  Bytes sig = parse_signature(*sig_field, label);
  if (p.alg && algorithm_from_name(*p.alg) != expected_alg) bad("alg '" + *p.alg + "' is not the expected one");
  const std::string base = signature_base(p, message, request);
  if (!verify_signature(key, expected_alg, Bytes(base.begin(), base.end()), sig))
    throw CryptoError(ErrorCode::Crypto, "HTTP message signature '" + label + "' does not verify");
  return p;
}

std::vector<Component> kps_components(bool device_request) {
  std::vector<Component> out{{"@status", false}, {"content-digest", false}};
  if (device_request) {
    out.push_back({"keyline-signature", true});
    out.push_back({"keyline-nonce", true});
  }
  return out;
}

void sign_kps_response(int status, Headers& response_headers, const std::string& body,
                       const Headers& request_headers, const std::string& keyid, std::int64_t created,
                       Algorithm alg, const Signer& signer) {
  response_headers.emplace_back(kContentDigestHeader, content_digest_sha256(body));
  Params p;
  p.components = kps_components(header_value(request_headers, "keyline-signature").has_value());
  p.created = created;
  p.keyid = keyid;
  p.alg = algorithm_name(alg);
  p.order = {"created", "keyid", "alg"};
  Message response{true, status, {}, {}, {}, {}, {}, response_headers};
  Message request;
  request.headers = request_headers;
  SignatureFields f = sign_message(kKpsLabel, p, response, &request, signer);
  response_headers.emplace_back(kSignatureInputHeader, f.signature_input);
  response_headers.emplace_back(kSignatureHeader, f.signature);
}

void verify_kps_response(int status, const Headers& response_headers, const std::string& body,
                         const Headers& request_headers, const Botan::Public_Key& key, Algorithm alg,
                         std::int64_t now, std::int64_t max_age) {
  auto digest = header_value(response_headers, kContentDigestHeader);
  if (!digest) bad("answer without Content-Digest");
  verify_content_digest(*digest, body);
  Message response{true, status, {}, {}, {}, {}, {}, response_headers};
  Message request;
  request.headers = request_headers;
  Params p = verify_message(kKpsLabel, response, &request, key, alg);
  if (!p.alg) bad("signature without alg");
  for (const Component& want : kps_components(true))
    if (std::find(p.components.begin(), p.components.end(), want) == p.components.end())
      bad("signature does not cover " + want.name + (want.req ? ";req" : ""));
  if (!p.created) bad("signature without created");
  if (*p.created < now - max_age || *p.created > now + max_age)
    throw CryptoError(ErrorCode::Crypto, "signature created outside the allowed window");
  if (p.expires && *p.expires < now) throw CryptoError(ErrorCode::Crypto, "signature expired");
}

}  // namespace keyline::core::http_signature
