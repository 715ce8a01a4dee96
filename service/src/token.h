// What several keyline-service commands share: the service token and the trust anchors.
#pragma once

#include <botan/x509cert.h>

#include <memory>
#include <string>
#include <vector>

#include "keyline/core/pkcs11.h"
#include "keyline/service/service.h"

namespace keyline::service {

// The token of `config` logged in with the PIN from pin_file or KEYLINE_SERVICE_PIN.
std::shared_ptr<core::Pkcs11Token> open_token(const TokenConfig& config, std::size_t sessions = 4);
// Every certificate of every file; ConfigError when none.
std::vector<Botan::X509_Certificate> load_trust(const std::vector<std::string>& files);

}  // namespace keyline::service
