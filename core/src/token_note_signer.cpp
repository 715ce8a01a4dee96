#include "keyline/core/token_note_signer.h"

#include "keyline/core/checkpoint.h"
#include "keyline/core/error.h"

namespace keyline::core::note {

TokenNoteSigner::TokenNoteSigner(std::shared_ptr<Pkcs11Token> token, const std::string& label, std::string name)
    : m_token(std::move(token)), m_label(label), m_name(std::move(name)) {
  if (!valid_key_name(m_name)) throw FormatError(ErrorCode::BadNote, "invalid key name");
  m_public = m_token->ed25519_public_key(m_label);
  m_key_id = note::key_id(m_name, ed25519_type, m_public);
  m_private = m_token->find_private_key(m_label);
}

Bytes TokenNoteSigner::sign(const std::string& text) const {
  if (tlog::parse_checkpoint(text).origin != m_name)
    throw FormatError(ErrorCode::BadCheckpoint, "the log key signs checkpoints of its own origin only");
  Bytes sig = m_token->sign_eddsa(m_private, reinterpret_cast<const std::uint8_t*>(text.data()), text.size());
  if (!Ed25519Verifier(m_name, m_public).verify(text, sig))
    throw CryptoError(ErrorCode::Crypto, "the token's Ed25519 signature does not verify under key '" + m_label + "'");
  return sig;
}

std::string TokenNoteSigner::verifier_key() const { return Ed25519Verifier(m_name, m_public).text(); }

}  // namespace keyline::core::note
