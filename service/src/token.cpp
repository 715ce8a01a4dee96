#include "token.h"

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/secret_input.h"

namespace keyline::service {

std::shared_ptr<core::Pkcs11Token> open_token(const TokenConfig& config, std::size_t sessions) {
  if (config.module.empty() || config.label.empty())
    throw core::ConfigError(core::ErrorCode::Config, "--pkcs11-module and --token-label are required");
  const auto pin = core::read_secret(config.pin_file, "KEYLINE_SERVICE_PIN");
  if (pin.empty())
    throw core::ConfigError(core::ErrorCode::Config, "the token PIN: give --pin-file or KEYLINE_SERVICE_PIN");
  return core::Pkcs11Token::open(config.module, config.label, core::SecureBytes(pin.begin(), pin.end()),
                                 sessions);
}

std::vector<Botan::X509_Certificate> load_trust(const std::vector<std::string>& files) {
  std::vector<Botan::X509_Certificate> out;
  for (const auto& f : files)
    for (auto& c : core::load_certificates_pem(f)) out.push_back(std::move(c));
  if (out.empty()) throw core::ConfigError(core::ErrorCode::Config, "--trust: no manufacturer root given");
  return out;
}

}  // namespace keyline::service
