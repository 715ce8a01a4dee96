// C2SP tlog-cosignature v1.0.0 (c2sp.org/tlog-cosignature@v1.0.0), Ed25519 type 0x04: a witness's
// timestamped statement that a checkpoint is the largest consistent tree head it saw of that log.
// The witness signs (backupdb's witness), recovery and monitors verify. docs/transparency.md, "Witness".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "keyline/core/bytes.h"
#include "keyline/core/signed_note.h"

namespace keyline::core::tlog {

// "Format": the key ID is SHA-256(<name> || "\n" || 0x04 || public key)[:4], and vkeys carry type 0x04.
constexpr std::uint8_t cosignature_type = 0x04;

// "Ed25519 signed message": "cosignature/v1\n", "time <timestamp>\n", then the whole note text of
// the checkpoint (with its final newline, without signature lines).
std::string cosigned_message(std::string_view checkpoint_text, std::uint64_t timestamp);

// A witness's public key: "<name>+<hex key ID>+<base64(0x04 || key)>". Throws FormatError(BadNote).
class CosignerKey {
 public:
  CosignerKey(std::string name, Bytes public_key);
  static CosignerKey parse(std::string_view vkey);
  const std::string& name() const { return m_name; }
  std::uint32_t key_id() const { return m_key_id; }
  const Bytes& public_key() const { return m_public; }
  std::string text() const;
  // The timestamp of a valid cosignature of `checkpoint_text` in `sig` (key ID and name already
  // matched), or throws CryptoError(NoteNotVerified).
  std::uint64_t verify(std::string_view checkpoint_text, const note::Signature& sig) const;

 private:
  std::string m_name;
  Bytes m_public;
  std::uint32_t m_key_id = 0;
};

// The witness's private key. Its file form is Go's note signer key,
// "PRIVATE+KEY+<name>+<hex key ID>+<base64(0x04 || 32-byte seed)>" (one line).
class Cosigner {
 public:
  Cosigner(std::string name, SecureBytes seed);
  static Cosigner generate(std::string name);
  // Throws FormatError(BadNote) for a text that is not such a key of type 0x04.
  static Cosigner parse(const SecureBytes& text);
  SecureBytes text() const;
  const CosignerKey& key() const { return m_key; }
  // The signature line (without newline) cosigning `checkpoint_text` at `timestamp` (< 2^63).
  std::string cosign(std::string_view checkpoint_text, std::uint64_t timestamp) const;

 private:
  SecureBytes m_seed;
  CosignerKey m_key;
};

// The names of the listed witnesses whose cosignature on the checkpoint note verifies, one per
// distinct public key (a key listed twice, or under two names, is one witness). Lines of
// unknown (name, key ID) are ignored ("Format": clients ignore lines that do not match); a listed
// key's line that fails throws CryptoError(NoteNotVerified); the note's syntax, FormatError(BadNote).
std::vector<std::string> verified_cosigners(std::string_view signed_note, const std::vector<CosignerKey>& witnesses);

}  // namespace keyline::core::tlog
