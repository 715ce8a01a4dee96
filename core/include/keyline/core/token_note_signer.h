// The transparency log key on a PKCS#11 token: a note::NoteSigner whose Ed25519 key never leaves
// the public DB's token (CKM_EDDSA, core/pkcs11.h). docs/transparency.md, "The log key on the token".
#pragma once

#include <memory>
#include <string>

#include "keyline/core/bytes.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/signed_note.h"

namespace keyline::core::note {

// Signs checkpoints of one log and nothing else: sign() refuses a text that is not a checkpoint
// (core/checkpoint.h) or whose origin is not the key's name, so whoever reaches the signer cannot
// use the log key to sign other notes (tlog-checkpoint's SHOULD that the key name be the origin,
// a MUST here as in tlog::open_checkpoint). Every signature is verified under the public key
// before it is returned, so a wrong or mismatched token key never yields a published note.
class TokenNoteSigner final : public NoteSigner {
 public:
  // `name`: the log's origin and the key name; `label`: both halves of the key on the token.
  // Throws Pkcs11KeyNotFound, Pkcs11Error(Pkcs11) (not an Ed25519 key), FormatError(BadNote) (name).
  TokenNoteSigner(std::shared_ptr<Pkcs11Token> token, const std::string& label, std::string name);

  const std::string& name() const override { return m_name; }
  std::uint32_t key_id() const override { return m_key_id; }
  // Throws FormatError(BadCheckpoint) for a text that is not a checkpoint of origin name(),
  // Pkcs11Error for the token, CryptoError(Crypto) when the token's signature does not verify.
  Bytes sign(const std::string& text) const override;

  const Bytes& public_key() const { return m_public; }
  std::string verifier_key() const;  // the vkey text ("<name>+<key ID>+<key>")

 private:
  std::shared_ptr<Pkcs11Token> m_token;
  std::string m_label;
  std::string m_name;
  Bytes m_public;
  std::uint32_t m_key_id = 0;
  Pkcs11Handle m_private = 0;
};

}  // namespace keyline::core::note
