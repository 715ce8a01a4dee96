// ENGINE is deprecated in OpenSSL 3 but it is what Debian 12 ships for PKCS#11 (no pkcs11-provider).
// Defined before any header, since Poco's Context.h includes OpenSSL too.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "keyline/station/tls_token_key.h"

#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>

#include "keyline/core/error.h"

namespace keyline::station {

namespace {

std::string openssl_reason() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no detail";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

// RFC 7512 PKCS#11 URI with percent-encoding for the characters a label may hold.
std::string uri_escape(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

struct EngineDeleter {
  void operator()(ENGINE* e) const {
    ENGINE_finish(e);
    ENGINE_free(e);
  }
};

// SoftHSM 2.6 reads a token's files under fcntl locks it does not wait for, and rewrites them on
// every login: while another process (a second station on the same token) logs in, the engine's slot
// enumeration can fail with CKR_GENERAL_ERROR (libp11 prints "Failed to enumerate slots"). libp11
// enumerates again on each load, so the same engine is asked again a moment later; a key that is
// really absent still fails after ~0.75 s. The engine is not freed between tries: unloading it would
// C_Finalize the module this process's own token sessions share.
EVP_PKEY* load_private_key_retrying(ENGINE* engine, const std::string& uri) {
  for (int attempt = 1;; ++attempt) {
    EVP_PKEY* pkey = ENGINE_load_private_key(engine, uri.c_str(), nullptr, nullptr);
    if (pkey || attempt == 4) return pkey;
    ERR_clear_error();
    std::this_thread::sleep_for(std::chrono::milliseconds(50 << attempt));
  }
}

}  // namespace

Poco::Net::Context::Ptr make_token_client_context(const std::string& ca_file, const std::string& cert_file,
                                                  const TokenKeyRef& key) {
  using core::ErrorCode;
  static std::mutex engine_mutex;  // engine loading touches OpenSSL globals
  std::lock_guard<std::mutex> lock(engine_mutex);

  Poco::Net::Context::Ptr ctx;
  try {
    ctx = new Poco::Net::Context(Poco::Net::Context::TLS_CLIENT_USE, "", "", ca_file,
                                 Poco::Net::Context::VERIFY_STRICT, 9, false,
                                 "ECDHE+AESGCM:ECDHE+CHACHA20");
  } catch (const Poco::Exception& e) {
    throw core::ConfigError(ErrorCode::Config, "cannot load TLS trust file " + ca_file + ": " + e.displayText());
  }
  SSL_CTX* ssl = ctx->sslContext();

  ENGINE_load_builtin_engines();
  std::unique_ptr<ENGINE, EngineDeleter> engine;
  {
    ENGINE* raw = ENGINE_by_id("pkcs11");
    if (!raw) {
      // ENGINE_by_id can also load it dynamically by path.
      raw = ENGINE_by_id("dynamic");
      if (raw && (!ENGINE_ctrl_cmd_string(raw, "SO_PATH", "pkcs11", 0) ||
                  !ENGINE_ctrl_cmd_string(raw, "LOAD", nullptr, 0))) {
        ENGINE_free(raw);
        raw = nullptr;
      }
    }
    if (!raw)
      throw core::Pkcs11Error(ErrorCode::Pkcs11, "OpenSSL PKCS#11 engine not available (install libengine-pkcs11-openssl)");
    if (!ENGINE_ctrl_cmd_string(raw, "MODULE_PATH", key.module.c_str(), 0)) {
      ENGINE_free(raw);
      throw core::Pkcs11Error(ErrorCode::Pkcs11, "PKCS#11 engine refused module " + key.module + ": " + openssl_reason());
    }
    if (!ENGINE_init(raw)) {
      ENGINE_free(raw);
      throw core::Pkcs11Error(ErrorCode::Pkcs11, "PKCS#11 engine init failed: " + openssl_reason());
    }
    engine.reset(raw);
  }
  // The PIN goes to the engine through its PIN control, not through the URI, so it never sits in a
  // std::string: a NUL-terminated copy in a secure buffer.
  core::SecureBytes pin(key.pin.begin(), key.pin.end());
  pin.push_back(0);
  if (!ENGINE_ctrl_cmd_string(engine.get(), "PIN", reinterpret_cast<const char*>(pin.data()), 0))
    throw core::Pkcs11Error(ErrorCode::Pkcs11LoginFailed, "PKCS#11 engine refused the PIN control");
  const std::string uri = "pkcs11:token=" + uri_escape(key.token) + ";object=" + uri_escape(key.key_label) + ";type=private";
  EVP_PKEY* pkey = load_private_key_retrying(engine.get(), uri);
  if (!pkey)
    throw core::Pkcs11Error(ErrorCode::Pkcs11KeyNotFound,
                            "TLS key '" + key.key_label + "' not found on token '" + key.token + "': " + openssl_reason());

  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pkey_guard(pkey, &EVP_PKEY_free);
  if (SSL_CTX_use_certificate_chain_file(ssl, cert_file.c_str()) != 1)
    throw core::ConfigError(ErrorCode::Config, "cannot load TLS client certificate " + cert_file + ": " + openssl_reason());
  if (SSL_CTX_use_PrivateKey(ssl, pkey) != 1 || SSL_CTX_check_private_key(ssl) != 1)
    throw core::Pkcs11Error(ErrorCode::Pkcs11, "TLS client certificate does not match the token key: " + openssl_reason());
  // The EVP_PKEY keeps its own engine reference; our functional reference can go.
  return ctx;
}

}  // namespace keyline::station
