#include "keyline/core/signed_text.h"

#include <botan/base64.h>
#include <botan/pubkey.h>

namespace keyline::core {

namespace {

constexpr std::size_t kMaxText = 64 * 1024;

bool good_name(const std::string& n) {
  if (n.empty() || n.size() > 32) return false;
  for (const char c : n)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  return true;
}

bool good_value(const std::string& v) {
  for (const char c : v)
    if (c < 0x20 || c > 0x7E) return false;
  return true;
}

}  // namespace

void SignedTextError::raise(const std::string& why) const { throw FormatError(code, what + ": " + why); }

const std::string& SignedText::field(const std::string& name) const {
  const auto it = fields.find(name);
  if (it == fields.end()) error.raise("no " + name + "= line in the signed part");
  return it->second;
}

Bytes decode_signed_text_base64(const std::string& text, const char* what, const SignedTextError& error) {
  try {
    const auto b = Botan::base64_decode(text, false);
    return Bytes(b.begin(), b.end());
  } catch (const Botan::Exception&) {
    error.raise(std::string(what) + " is not base64");
  }
}

SignedText parse_signed_text(const std::string& text, const std::string& magic, const SignedTextError& error) {
  if (text.size() > kMaxText) error.raise("larger than 64 KiB");
  if (text.empty() || text.back() != '\n') error.raise("does not end with a newline");
  if (text.compare(0, magic.size() + 1, magic + "\n") != 0) error.raise("does not start with '" + magic + "'");
  SignedText out;
  out.error = error;
  bool signature_seen = false;
  for (std::size_t at = magic.size() + 1; at < text.size();) {
    const std::size_t end = text.find('\n', at);
    const std::string line = text.substr(at, end - at);
    const std::size_t eq = line.find('=');
    if (eq == std::string::npos) error.raise("a line without '='");
    const std::string name = line.substr(0, eq), value = line.substr(eq + 1);
    if (!good_name(name)) error.raise("a name that is not [a-z0-9_]{1,32}");
    if (!good_value(value)) error.raise("the value of " + name + " is not printable ASCII");
    if (!signature_seen && name == "signature") {
      out.signed_part = text.substr(0, at);
      out.signature = decode_signed_text_base64(value, "signature", error);
      signature_seen = true;
    } else {
      auto& into = signature_seen ? out.trailer : out.fields;
      if (!into.emplace(name, value).second) error.raise(name + " given twice");
    }
    at = end + 1;
  }
  if (!signature_seen) error.raise("no signature= line");
  return out;
}

bool signed_text_verifies(const SignedText& text, const Botan::X509_Certificate& cert) {
  const auto key = cert.subject_public_key();
  Botan::PK_Verifier verifier(*key, "EMSA1(SHA-256)", Botan::DER_SEQUENCE);
  const auto* p = reinterpret_cast<const std::uint8_t*>(text.signed_part.data());
  return verifier.verify_message(p, text.signed_part.size(), text.signature.data(), text.signature.size());
}

}  // namespace keyline::core
