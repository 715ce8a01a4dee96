// The KPS's crypto module for what it sends (docs/kps.md "Signed answers"): an EC P-256 key on a
// PKCS#11 token signs every answer to an authenticated /v1 request (RFC 9421, the "kps" profile of
// core/http_signature.h) and every webhook request. The private key never leaves the token.
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
  // Adds Content-Digest, Signature-Input and Signature to reply, an answer to req, which passed
  // authentication (a device's signature and fresh nonce, or an owner's token): the answer covers the
  // device's Keyline-Signature/Keyline-Nonce with ;req. An unauthenticated request gets no signature at
  // all (server.cpp handle): one over values it chose would make the KPS a signing oracle, and each
  // one is a token operation an anonymous flood could buy.
  void sign_answer(Reply& reply, const Request& req, std::int64_t now) const;
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
