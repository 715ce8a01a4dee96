// C2SP tlog-cosignature v1.0.0, Ed25519 (docs/transparency.md, "Witness").
#include "keyline/core/tlog_cosignature.h"

#include <botan/ed25519.h>
#include <botan/system_rng.h>

#include <algorithm>
#include <cstdio>

#include "keyline/core/error.h"

namespace keyline::core::tlog {

namespace {

[[noreturn]] void malformed(const std::string& why) { throw FormatError(ErrorCode::BadNote, why); }
[[noreturn]] void unverified(const std::string& why) { throw CryptoError(ErrorCode::NoteNotVerified, why); }

std::string hex8(std::uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

std::uint32_t parse_hex8(std::string_view s) {
  if (s.size() != 8 || s.find_first_not_of("0123456789abcdef") != std::string_view::npos)
    malformed("a key ID is not 8 lower-case hex digits");
  return static_cast<std::uint32_t>(std::stoul(std::string(s), nullptr, 16));
}

// "<name>+<hex key ID>+<base64(type || key)>": the name, the ID and the decoded key.
struct KeyText {
  std::string name;
  std::uint32_t id = 0;
  SecureBytes key;
};

KeyText split_key_text(std::string_view t) {
  const auto p1 = t.find('+');
  const auto p2 = p1 == std::string_view::npos ? p1 : t.find('+', p1 + 1);
  if (p2 == std::string_view::npos) malformed("a cosigner key is <name>+<key ID>+<key>");
  KeyText k{std::string(t.substr(0, p1)), parse_hex8(t.substr(p1 + 1, p2 - p1 - 1)), {}};
  Bytes raw;
  try {
    raw = from_base64(t.substr(p2 + 1));
  } catch (const FormatError&) {
    malformed("a cosigner key's key is not base64");
  }
  if (raw.size() != 33 || raw[0] != cosignature_type)
    malformed("a cosigner key must be an Ed25519 cosignature key (type 0x04, 32 bytes)");
  k.key.assign(raw.begin() + 1, raw.end());
  std::fill(raw.begin(), raw.end(), 0);
  return k;
}

Bytes public_of(const SecureBytes& seed) {
  if (seed.size() != 32) malformed("an Ed25519 private key is 32 bytes");
  return Botan::Ed25519_PrivateKey(seed).get_public_key();
}

}  // namespace

std::string cosigned_message(std::string_view checkpoint_text, std::uint64_t timestamp) {
  return "cosignature/v1\ntime " + std::to_string(timestamp) + "\n" + std::string(checkpoint_text);
}

CosignerKey::CosignerKey(std::string name, Bytes public_key) : m_name(std::move(name)), m_public(std::move(public_key)) {
  if (!note::valid_key_name(m_name)) malformed("invalid cosigner name");
  if (m_public.size() != 32) malformed("an Ed25519 public key is 32 bytes");
  m_key_id = note::key_id(m_name, cosignature_type, m_public);
}

CosignerKey CosignerKey::parse(std::string_view vkey) {
  KeyText k = split_key_text(vkey);
  CosignerKey key(k.name, Bytes(k.key.begin(), k.key.end()));
  if (key.key_id() != k.id) malformed("a cosigner key's key ID does not match its name and key");
  return key;
}

std::string CosignerKey::text() const {
  Bytes raw{cosignature_type};
  raw.insert(raw.end(), m_public.begin(), m_public.end());
  return m_name + "+" + hex8(m_key_id) + "+" + to_base64(raw);
}

std::uint64_t CosignerKey::verify(std::string_view checkpoint_text, const note::Signature& sig) const {
  // "Format": timestamped_signature is a big-endian u64 and the 64-byte Ed25519 signature.
  if (sig.signature.size() != 8 + 64) unverified("the cosignature of " + m_name + " is not 72 bytes");
  std::uint64_t t = 0;
  for (int i = 0; i < 8; ++i) t = (t << 8) | sig.signature[i];
  if (t > 0x7FFFFFFFFFFFFFFFull) unverified("the cosignature of " + m_name + " has a timestamp above 2^63 - 1");
  const note::Ed25519Verifier ed(m_name, m_public);
  if (!ed.verify(cosigned_message(checkpoint_text, t), Bytes(sig.signature.begin() + 8, sig.signature.end())))
    unverified("the cosignature of " + m_name + " does not verify");
  return t;
}

Cosigner::Cosigner(std::string name, SecureBytes seed) : m_seed(std::move(seed)), m_key(std::move(name), public_of(m_seed)) {}

Cosigner Cosigner::generate(std::string name) {
  Botan::System_RNG rng;
  const Botan::Ed25519_PrivateKey key(rng);
  const auto& priv = key.get_private_key();  // seed || public key
  return Cosigner(std::move(name), SecureBytes(priv.begin(), priv.begin() + 32));
}

Cosigner Cosigner::parse(const SecureBytes& text) {
  std::string_view t(reinterpret_cast<const char*>(text.data()), text.size());
  while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.remove_suffix(1);
  const std::string_view prefix = "PRIVATE+KEY+";
  if (t.substr(0, prefix.size()) != prefix) malformed("a witness key file holds PRIVATE+KEY+<name>+<key ID>+<key>");
  KeyText k = split_key_text(t.substr(prefix.size()));
  Cosigner c(k.name, std::move(k.key));
  if (c.key().key_id() != k.id) malformed("the witness key's key ID does not match its name and key");
  return c;
}

SecureBytes Cosigner::text() const {
  SecureBytes raw{cosignature_type};
  raw.insert(raw.end(), m_seed.begin(), m_seed.end());
  const std::string head = "PRIVATE+KEY+" + m_key.name() + "+" + hex8(m_key.key_id()) + "+";
  SecureBytes out(head.begin(), head.end());
  const std::string b64 = to_base64(raw.data(), raw.size());
  out.insert(out.end(), b64.begin(), b64.end());
  out.push_back('\n');
  return out;
}

std::string Cosigner::cosign(std::string_view checkpoint_text, std::uint64_t timestamp) const {
  if (timestamp > 0x7FFFFFFFFFFFFFFFull) malformed("a cosignature timestamp is at most 2^63 - 1");
  Bytes sig;
  for (int i = 7; i >= 0; --i) sig.push_back(static_cast<std::uint8_t>(timestamp >> (8 * i)));
  const note::Ed25519Signer ed(m_key.name(), m_seed);
  const Bytes raw = ed.sign(cosigned_message(checkpoint_text, timestamp));
  sig.insert(sig.end(), raw.begin(), raw.end());
  return note::Signature{m_key.name(), m_key.key_id(), sig}.line();
}

std::vector<std::string> verified_cosigners(std::string_view signed_note, const std::vector<CosignerKey>& witnesses) {
  const note::Note n = note::parse_note(signed_note);
  std::vector<std::string> out;
  std::vector<Bytes> counted;  // one witness is one key, whatever names or repeats list it
  for (const auto& w : witnesses) {
    bool found = false;
    for (const auto& s : n.signatures) {
      if (s.name != w.name() || s.key_id != w.key_id()) continue;
      if (found) unverified("two cosignatures by the witness " + w.name());
      w.verify(n.text, s);
      found = true;
    }
    if (!found || std::find(counted.begin(), counted.end(), w.public_key()) != counted.end()) continue;
    counted.push_back(w.public_key());
    out.push_back(w.name());
  }
  return out;
}

}  // namespace keyline::core::tlog
