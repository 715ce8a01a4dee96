// The station's TLS client key stays on the HSM token: OpenSSL reaches it through the PKCS#11
// engine (Debian's libengine-pkcs11-openssl), so publishing over mutual TLS never puts the key in
// process memory. Poco's Context exposes the SSL_CTX we attach the engine key to.
#pragma once

#include <string>

#include <Poco/Net/Context.h>

#include "keyline/core/bytes.h"

namespace keyline::station {

struct TokenKeyRef {
  std::string module;     // PKCS#11 module path
  std::string token;      // token label
  std::string key_label;  // CKA_LABEL of the private key
  core::SecureBytes pin;
};

// A client Context that verifies the server against ca_file and presents cert_file with the token key.
// Throws core::Error(Pkcs11 / Config) with the reason.
Poco::Net::Context::Ptr make_token_client_context(const std::string& ca_file, const std::string& cert_file,
                                                  const TokenKeyRef& key);

}  // namespace keyline::station
