#include "keyline/backupdb/log.h"

#include "keyline/core/error.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/secret_input.h"

namespace keyline::backupdb {
namespace {

std::shared_ptr<core::Pkcs11Token> open_token(const LogSettings& s) {
  if (s.token_module.empty() || s.token_label.empty())
    throw core::ConfigError(core::ErrorCode::Config, "the log key needs --log-token-module and --log-token-label");
  if (!core::note::valid_key_name(s.origin))
    throw core::ConfigError(core::ErrorCode::Config,
                            "--log-origin is the log key's name: no spaces, no '+', valid UTF-8 (C2SP signed-note)");
  const auto pin = core::read_secret(s.token_pin_file, "KEYLINE_BACKUPDB_LOG_TOKEN_PIN");
  if (pin.empty())
    throw core::ConfigError(core::ErrorCode::Config,
                            "the log token's PIN: give --log-token-pin-file or KEYLINE_BACKUPDB_LOG_TOKEN_PIN");
  // Two sessions: the integrator signs one checkpoint at a time, `log key` reads.
  return core::Pkcs11Token::open(s.token_module, s.token_label, pin, 2);
}

}  // namespace

std::string log_init(const LogSettings& settings) {
  auto token = open_token(settings);
  if (token->has_private_key(settings.key_label) || token->has_public_key(settings.key_label))
    throw core::ConfigError(core::ErrorCode::Config, "the token already holds a key labelled '" + settings.key_label +
                                                         "': `keyline-backupdb log key` prints its verifier key");
  token->generate_ed25519(settings.key_label, core::Bytes(settings.key_label.begin(), settings.key_label.end()));
  return core::note::TokenNoteSigner(token, settings.key_label, settings.origin).verifier_key();
}

std::string log_key(const LogSettings& settings) { return open_log_signer(settings)->verifier_key(); }

std::shared_ptr<core::note::TokenNoteSigner> open_log_signer(const LogSettings& settings) {
  return std::make_shared<core::note::TokenNoteSigner>(open_token(settings), settings.key_label, settings.origin);
}

}  // namespace keyline::backupdb
