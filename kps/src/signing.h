// The KPS's crypto module for what it sends (docs/kps.md "Signed answers"): an EC P-256 key on a
// PKCS#11 token signs every /v1 answer (RFC 9421, the "kps" profile of core/http_signature.h) and every
// webhook request. The private key never leaves the token.
#pragma once

#include <memory>
#include <string>

#include "context.h"
#include "keyline/core/http_signature.h"
#include "keyline/core/pkcs11.h"

namespace keyline::kps {

class AnswerSigner {
 public:
  // Opens the token and finds the key pair. Throws ConfigError naming what is missing.
  explicit AnswerSigner(const SignKeySettings& settings);
  const std::string& keyid() const { return m_keyid; }
  core::http_signature::Signer signer() const;
  // Adds Content-Digest, Signature-Input and Signature to reply, an answer to req.
  // bound: the request passed device authentication (signature and a fresh nonce). Only then does the
  // answer cover its Keyline-Signature/Keyline-Nonce with ;req: a signature over values an
  // unauthenticated caller chose would make the KPS a signing oracle for them.
  void sign_answer(Reply& reply, const Request& req, std::int64_t now, bool bound) const;
  // The headers of a signed webhook POST of body to uri (scheme https).
  core::http_signature::Headers sign_webhook(const std::string& authority, const std::string& path,
                                             const std::string& body, std::int64_t now) const;

 private:
  std::shared_ptr<core::Pkcs11Token> m_token;
  core::Pkcs11Handle m_key = 0;
  std::string m_keyid;
};

// hex SHA-256 of the SubjectPublicKeyInfo DER.
std::string key_id_of(const Botan::Public_Key& key);

}  // namespace keyline::kps
