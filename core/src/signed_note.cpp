#include "keyline/core/signed_note.h"

#include <algorithm>
#include <set>

#include <botan/ed25519.h>
#include <botan/hash.h>
#include <botan/pubkey.h>
#include <botan/system_rng.h>

#include "keyline/core/error.h"
#include "keyline/core/utf8.h"

namespace keyline::core::note {

namespace {

const std::string em_dash_space = "\xE2\x80\x94 ";  // U+2014 U+0020, the signature line prefix

[[noreturn]] void malformed(const std::string& why) { throw FormatError(ErrorCode::BadNote, why); }
[[noreturn]] void unverified(const std::string& why) { throw CryptoError(ErrorCode::NoteNotVerified, why); }

std::string hex8(std::uint32_t v) {
  static const char digits[] = "0123456789abcdef";
  std::string out(8, '0');
  for (int i = 7; i >= 0; --i, v >>= 4) out[i] = digits[v & 0xF];
  return out;
}

std::uint32_t parse_hex8(std::string_view s) {
  if (s.size() != 8) malformed("verifier key ID is not 8 hex digits");
  std::uint32_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else malformed("verifier key ID is not 8 hex digits");
    v = (v << 4) | static_cast<std::uint32_t>(d);
  }
  return v;
}

// One "— <name> <base64>" line (without its newline).
Signature parse_signature_line(std::string_view line) {
  if (line.substr(0, em_dash_space.size()) != em_dash_space) malformed("a signature line does not start with an em dash and a space");
  line.remove_prefix(em_dash_space.size());
  const auto space = line.find(' ');
  if (space == std::string_view::npos) malformed("a signature line has no signature");
  Signature s;
  s.name = std::string(line.substr(0, space));
  if (!valid_key_name(s.name)) malformed("a signature line has an invalid key name");
  Bytes raw;
  try {
    raw = from_base64(line.substr(space + 1));  // strict: a second space or any stray byte fails here
  } catch (const FormatError&) {
    malformed("a signature line's signature is not base64");
  }
  if (raw.size() < 5) malformed("a signature line's signature is shorter than a key ID and one byte");
  s.key_id = (std::uint32_t{raw[0]} << 24) | (std::uint32_t{raw[1]} << 16) | (std::uint32_t{raw[2]} << 8) | raw[3];
  s.signature.assign(raw.begin() + 4, raw.end());
  return s;
}

void check_text(const std::string& text) {
  if (text.empty() || text.back() != '\n') malformed("note text must end in a newline");
  if (text.size() >= 2 && text.compare(text.size() - 2, 2, "\n\n") == 0)
    malformed("note text must not end in a blank line (it would split at the wrong place)");
  if (!valid_note_chars(text)) malformed("note text is not UTF-8 without control characters");
}

// RFC 8032 section 5.1.7: S must be below the group order L. Botan 2.19 does not check it and
// accepts S + L, a second valid signature for the same text and key (checked: it verifies).
bool canonical_s(const Bytes& sig) {
  static const std::uint8_t order_le[32] = {0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7,
                                            0xa2, 0xde, 0xf9, 0xde, 0x14, 0,    0,    0,    0,    0,    0,
                                            0,    0,    0,    0,    0,    0,    0,    0,    0,    0x10};
  for (int i = 31; i >= 0; --i) {
    if (sig[32 + i] != order_le[i]) return sig[32 + i] < order_le[i];
  }
  return false;  // S == L
}

}  // namespace

bool valid_note_chars(std::string_view text) {
  return utf8_all(text, [](std::uint32_t cp) { return cp >= 0x20 || cp == '\n'; });
}

bool valid_key_name(std::string_view name) {
  if (name.empty() || name.size() > max_name_bytes) return false;
  return utf8_all(name, [](std::uint32_t cp) {
    return cp >= 0x20 && cp != '+' && !is_unicode_space(cp);
  });
}

std::uint32_t key_id(std::string_view name, std::uint8_t type, const Bytes& public_key) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(reinterpret_cast<const std::uint8_t*>(name.data()), name.size());
  h->update(0x0A);
  h->update(type);
  h->update(public_key.data(), public_key.size());
  const auto d = h->final_stdvec();
  return (std::uint32_t{d[0]} << 24) | (std::uint32_t{d[1]} << 16) | (std::uint32_t{d[2]} << 8) | d[3];
}

std::string Signature::line() const {
  Bytes raw{static_cast<std::uint8_t>(key_id >> 24), static_cast<std::uint8_t>(key_id >> 16),
            static_cast<std::uint8_t>(key_id >> 8), static_cast<std::uint8_t>(key_id)};
  raw.insert(raw.end(), signature.begin(), signature.end());
  return em_dash_space + name + " " + to_base64(raw);
}

Note parse_note(std::string_view message) {
  if (message.size() > max_note_bytes) malformed("note larger than " + std::to_string(max_note_bytes) + " bytes");
  if (!valid_note_chars(message)) malformed("note is not UTF-8 without control characters");
  if (message.empty() || message.back() != '\n') malformed("note does not end in a newline");
  // "Format": the text is separated from the signatures by the last empty line.
  const auto split = message.rfind("\n\n");
  if (split == std::string_view::npos) malformed("note has no blank line before its signatures");
  Note n;
  n.text = std::string(message.substr(0, split + 1));
  std::string_view sigs = message.substr(split + 2);
  if (sigs.empty()) malformed("note has no signature line");
  while (!sigs.empty()) {
    const auto nl = sigs.find('\n');  // found: the message ends in a newline
    if (n.signatures.size() == max_signatures) malformed("note has more than " + std::to_string(max_signatures) + " signatures");
    n.signatures.push_back(parse_signature_line(sigs.substr(0, nl)));
    sigs.remove_prefix(nl + 1);
  }
  return n;
}

Ed25519Signer::Ed25519Signer(std::string name, const SecureBytes& seed) : m_name(std::move(name)) {
  if (!valid_key_name(m_name)) malformed("invalid key name");
  if (seed.size() != 32) malformed("an Ed25519 private key is 32 bytes");
  m_seed = seed;
  const Botan::Ed25519_PrivateKey key(m_seed);
  m_public = key.get_public_key();
  m_key_id = note::key_id(m_name, ed25519_type, m_public);
}

Ed25519Signer Ed25519Signer::generate(std::string name) {
  Botan::System_RNG rng;
  const Botan::Ed25519_PrivateKey key(rng);
  const auto& priv = key.get_private_key();  // seed || public key
  return Ed25519Signer(std::move(name), SecureBytes(priv.begin(), priv.begin() + 32));
}

Bytes Ed25519Signer::sign(const std::string& text) const {
  Botan::System_RNG rng;
  const Botan::Ed25519_PrivateKey key(m_seed);
  Botan::PK_Signer signer(key, rng, "Pure");
  return signer.sign_message(reinterpret_cast<const std::uint8_t*>(text.data()), text.size(), rng);
}

std::string Ed25519Signer::verifier_key() const { return Ed25519Verifier(m_name, m_public).text(); }

Ed25519Verifier::Ed25519Verifier(std::string name, Bytes public_key)
    : m_name(std::move(name)), m_public(std::move(public_key)) {
  if (!valid_key_name(m_name)) malformed("invalid key name");
  if (m_public.size() != 32) malformed("an Ed25519 public key is 32 bytes");
  m_key_id = note::key_id(m_name, ed25519_type, m_public);
}

Ed25519Verifier Ed25519Verifier::parse(std::string_view vkey) {
  const auto p1 = vkey.find('+');
  const auto p2 = p1 == std::string_view::npos ? p1 : vkey.find('+', p1 + 1);
  if (p2 == std::string_view::npos) malformed("a verifier key is <name>+<key ID>+<key>");
  const std::uint32_t id = parse_hex8(vkey.substr(p1 + 1, p2 - p1 - 1));
  Bytes key;
  try {
    key = from_base64(vkey.substr(p2 + 1));
  } catch (const FormatError&) {
    malformed("a verifier key's key is not base64");
  }
  if (key.size() != 33 || key[0] != ed25519_type) malformed("a verifier key must be an Ed25519 key (type 0x01, 32 bytes)");
  Ed25519Verifier v(std::string(vkey.substr(0, p1)), Bytes(key.begin() + 1, key.end()));
  if (v.key_id() != id) malformed("a verifier key's key ID does not match its name and key");
  return v;
}

bool Ed25519Verifier::verify(const std::string& text, const Bytes& signature) const {
  if (signature.size() != 64 || !canonical_s(signature)) return false;
  try {
    const Botan::Ed25519_PublicKey key(m_public);
    Botan::PK_Verifier verifier(key, "Pure");
    return verifier.verify_message(reinterpret_cast<const std::uint8_t*>(text.data()), text.size(),
                                   signature.data(), signature.size());
  } catch (const Botan::Exception&) {
    return false;
  }
}

std::string Ed25519Verifier::text() const {
  Bytes key{ed25519_type};
  key.insert(key.end(), m_public.begin(), m_public.end());
  return m_name + "+" + hex8(m_key_id) + "+" + to_base64(key);
}

std::string sign_note(const std::string& text, const std::vector<const NoteSigner*>& signers) {
  check_text(text);
  if (signers.empty()) malformed("a signed note needs at least one signature");
  if (signers.size() > max_signatures) malformed("too many signers");
  std::string out = text + "\n";
  for (const auto* s : signers) {
    if (!valid_key_name(s->name())) malformed("invalid key name");
    out += Signature{s->name(), s->key_id(), s->sign(text)}.line() + "\n";
  }
  if (out.size() > max_note_bytes) malformed("signed note larger than " + std::to_string(max_note_bytes) + " bytes");
  return out;
}

VerifiedNote open_note(std::string_view message, const std::vector<const NoteVerifier*>& known) {
  Note n = parse_note(message);
  VerifiedNote out;
  out.text = std::move(n.text);
  std::set<std::string> lines;
  std::set<const NoteVerifier*> used;
  for (auto& sig : n.signatures) {
    if (!lines.insert(sig.line()).second) malformed("the same signature line twice");
    const auto it = std::find_if(known.begin(), known.end(), [&](const NoteVerifier* v) {
      return v->name() == sig.name && v->key_id() == sig.key_id;
    });
    if (it == known.end()) {  // an unknown key, even one sharing a name or an ID with a known one
      out.unverified.push_back(std::move(sig));
      continue;
    }
    if (!used.insert(*it).second) unverified("two signatures by the key " + sig.name);
    if (!(*it)->verify(out.text, sig.signature)) unverified("the signature by the key " + sig.name + " does not verify");
    out.verified.push_back(std::move(sig));
  }
  if (out.verified.empty()) unverified("no signature by a known key");
  return out;
}

}  // namespace keyline::core::note
