#include "signing.h"

#include <botan/hash.h>
#include <botan/hex.h>
#include <botan/pubkey.h>
#include <botan/x509_key.h>

#include <fstream>

#include "keyline/core/secret_input.h"

namespace keyline::kps {
namespace {

namespace hs = core::http_signature;

std::shared_ptr<core::Pkcs11Token> open_token(const SignKeySettings& s) {
  if (s.module.empty() || s.key_label.empty())
    throw core::ConfigError(core::ErrorCode::Config, "the signing key needs --sign-module, --sign-token-label and --sign-key-label");
  const auto pin = core::read_secret(s.pin_file, "KEYLINE_KPS_SIGN_PIN");
  if (pin.empty()) throw core::ConfigError(core::ErrorCode::Config, "no signing-token PIN: --sign-pin-file or KEYLINE_KPS_SIGN_PIN");
  return core::Pkcs11Token::open(s.module, s.token_label, core::SecureBytes(pin.begin(), pin.end()), 4);
}

}  // namespace

std::string key_id_of(const Botan::Public_Key& key) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(key.subject_public_key());
  return Botan::hex_encode(h->final(), false);
}

AnswerSigner::AnswerSigner(const SignKeySettings& settings) : m_token(open_token(settings)) {
  m_key = m_token->find_private_key(settings.key_label);
  m_keyid = key_id_of(*m_token->ec_public_key(settings.key_label));
}

hs::Signer AnswerSigner::signer() const {
  auto token = m_token;
  const auto key = m_key;
  return [token, key](const core::Bytes& base) { return token->sign_ecdsa_sha256_raw(key, base.data(), base.size()); };
}

void AnswerSigner::sign_answer(Reply& reply, const Request& req, std::int64_t now) const {
  const hs::Headers request_headers(req.headers.begin(), req.headers.end());
  hs::Headers headers;
  hs::sign_kps_response(reply.status, headers, reply.body, request_headers, m_keyid, now,
                        hs::Algorithm::EcdsaP256Sha256, signer());
  for (auto& h : headers) reply.headers.push_back(std::move(h));
}

hs::Headers AnswerSigner::sign_webhook(const std::string& authority, const std::string& path, const std::string& body,
                                       std::int64_t now) const {
  hs::Message m;
  m.method = "POST";
  m.authority = authority;
  m.path = path.empty() ? "/" : path;
  m.headers = {{hs::kContentDigestHeader, hs::content_digest_sha256(body)}};
  hs::Params p;
  p.components = {{"@method", false}, {"@target-uri", false}, {"content-digest", false}};
  p.created = now;
  p.keyid = m_keyid;
  p.alg = hs::algorithm_name(hs::Algorithm::EcdsaP256Sha256);
  p.order = {"created", "keyid", "alg"};
  const auto fields = hs::sign_message(hs::kKpsLabel, p, m, nullptr, signer());
  return {m.headers[0], {hs::kSignatureInputHeader, fields.signature_input}, {hs::kSignatureHeader, fields.signature}};
}

std::string sign_key_init(const SignKeySettings& sign, const std::string& out) {
  auto token = open_token(sign);
  if (!token->has_private_key(sign.key_label)) token->generate_ec_p256(sign.key_label, {0x4B, 0x50, 0x53});
  const auto pub = token->ec_public_key(sign.key_label);
  std::ofstream f(out);
  if (!(f << Botan::X509::PEM_encode(*pub)))
    throw core::ConfigError(core::ErrorCode::Config, "cannot write " + out);
  return key_id_of(*pub);
}

}  // namespace keyline::kps
