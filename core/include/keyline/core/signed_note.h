// C2SP signed-note v1.0.0 (c2sp.org/signed-note@v1.0.0) with Ed25519 keys (signature type 0x01):
// note text, signature lines, key IDs, verifier keys, signing through a signer interface (the key may
// live on a PKCS#11 token) and verification. docs/transparency.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "keyline/core/bytes.h"

namespace keyline::core::note {

// Bounds on what a verifier reads (the spec's "Format": verifiers SHOULD limit the number of
// signatures and MUST accept at least 16). 100 lines as Go's sumdb/note; 256 KiB leaves room for
// 16 post-quantum signatures of ~5 kB besides the text.
constexpr std::size_t max_note_bytes = 256 * 1024;
constexpr std::size_t max_signatures = 100;
constexpr std::size_t max_name_bytes = 256;
constexpr std::uint8_t ed25519_type = 0x01;

// "Format": non-empty, no Unicode space, no '+', valid UTF-8 (and no control character).
bool valid_key_name(std::string_view name);
// Valid UTF-8, no ASCII control character other than newline.
bool valid_note_chars(std::string_view text);
// "Signatures": SHA-256(name || 0x0A || type || public key)[:4], big-endian.
std::uint32_t key_id(std::string_view name, std::uint8_t type, const Bytes& public_key);

struct Signature {
  std::string name;
  std::uint32_t key_id = 0;
  Bytes signature;  // without the 4-byte key ID
  std::string line() const;  // "— <name> <base64(key ID || signature)>" without the newline
};

struct Note {
  std::string text;  // ends in a newline; what the signatures cover
  std::vector<Signature> signatures;
};

// Syntax only (nothing verified): valid UTF-8 without control characters, text + blank line +
// one or more well-formed signature lines, split at the last blank line, within the limits above.
// Throws FormatError(BadNote).
Note parse_note(std::string_view message);

// Signs note text. Implementations: Ed25519Signer (software key, tests and tools) and
// TokenNoteSigner (core/token_note_signer.h: the log key on a PKCS#11 token, CKM_EDDSA).
class NoteSigner {
 public:
  virtual ~NoteSigner() = default;
  virtual const std::string& name() const = 0;
  virtual std::uint32_t key_id() const = 0;
  virtual Bytes sign(const std::string& text) const = 0;  // the raw signature
};

class NoteVerifier {
 public:
  virtual ~NoteVerifier() = default;
  virtual const std::string& name() const = 0;
  virtual std::uint32_t key_id() const = 0;
  virtual bool verify(const std::string& text, const Bytes& signature) const = 0;
};

class Ed25519Signer : public NoteSigner {
 public:
  // seed: the 32-byte RFC 8032 private key. Throws FormatError(BadNote) for a bad name or seed.
  Ed25519Signer(std::string name, const SecureBytes& seed);
  static Ed25519Signer generate(std::string name);
  const std::string& name() const override { return m_name; }
  std::uint32_t key_id() const override { return m_key_id; }
  Bytes sign(const std::string& text) const override;
  const Bytes& public_key() const { return m_public; }
  std::string verifier_key() const;  // the vkey text for this key

 private:
  std::string m_name;
  SecureBytes m_seed;
  Bytes m_public;
  std::uint32_t m_key_id = 0;
};

class Ed25519Verifier : public NoteVerifier {
 public:
  // Throws FormatError(BadNote) for a bad name or a key that is not 32 bytes.
  Ed25519Verifier(std::string name, Bytes public_key);
  // "<name>+<hex key ID>+<base64(0x01 || public key)>"; the key ID must match the key. Throws BadNote.
  static Ed25519Verifier parse(std::string_view vkey);
  const std::string& name() const override { return m_name; }
  std::uint32_t key_id() const override { return m_key_id; }
  bool verify(const std::string& text, const Bytes& signature) const override;
  const Bytes& public_key() const { return m_public; }
  std::string text() const;  // the vkey text

 private:
  std::string m_name;
  Bytes m_public;
  std::uint32_t m_key_id = 0;
};

// Text + blank line + one signature line per signer. The text must be a valid note text (ends in
// a newline, no blank line at its end, valid characters). Throws FormatError(BadNote).
std::string sign_note(const std::string& text, const std::vector<const NoteSigner*>& signers);

struct VerifiedNote {
  std::string text;
  std::vector<Signature> verified;    // by known keys, each key once
  std::vector<Signature> unverified;  // by unknown keys, ignored as the spec says
};

// "Signatures": a signature whose (name, key ID) is unknown is ignored; a known key's signature is
// verified and one that fails rejects the whole note; a second signature by the same known key is
// refused as malformed (one key signs a text once); with no known key's signature the note is
// refused; the same signature line twice is malformed. Throws FormatError(BadNote) for syntax,
// CryptoError(NoteNotVerified) for signatures.
VerifiedNote open_note(std::string_view message, const std::vector<const NoteVerifier*>& known);

}  // namespace keyline::core::note
