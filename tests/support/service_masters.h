// What the service tests on both sides share (tests/integration/service, tests/integration/device_service):
// masters of derivation versions 1 and 2 on the hsm fixture's token, the comm keys the station derives
// from them (docs/service.md "Key derivation"), and a public DB that knows no chip.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "keyline/core/http_server.h"
#include "keyline/core/http_service.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/scp03_session.h"
#include "testenv.h"

namespace keyline::test {

// Version 1 `base` (HMAC) and version 2 `base`-v2 (AES-256, DERIVE only), made on the token once.
class ServiceMasters {
 public:
  explicit ServiceMasters(std::string base) : m_base(std::move(base)) {
    const auto env = hsm_env();
    m_token = core::Pkcs11Token::open(env.module, env.label,
                                      core::SecureBytes(env.user_pin.begin(), env.user_pin.end()), 4);
    m_token->generate_hmac_key(m_base);                                         // version 1: HMAC
    m_token->generate_mirrorable_aes_derive_key(m_base + "-v2", {0, 0, 0, 2});  // version 2: AES-256 DERIVE only
  }
  const std::string& base() const { return m_base; }
  const std::shared_ptr<core::Pkcs11Token>& token() const { return m_token; }

  // DGI 8103, the device's comm key, as the station derives it for each version.
  core::SecureBytes comm_v1(const std::string& imei) const {
    const std::string in = "keyline/comm/v1" + imei;
    return m_token->derive_hmac_sha256(m_base, core::Bytes(in.begin(), in.end()));
  }
  core::SecureBytes comm_v2(const core::ChipId& chip) const {
    const auto h = m_token->derive_aes_ecb(m_token->find_secret_key(m_base + "-v2"),
                                           core::scp::comm_derivation_data_v2(chip), {32, false, false, true});
    auto v = m_token->secret_value(h);
    m_token->destroy_object(h);
    return v;
  }

 private:
  std::string m_base;
  std::shared_ptr<core::Pkcs11Token> m_token;
};

// A public DB that knows no chip: the service answers 404 for one it has not cached.
struct EmptyPublicDb {
  core::http::Server server;
  explicit EmptyPublicDb(const std::string& name)
      : server(
            [&name] {
              core::http::ServerOptions o;
              o.name = name;
              o.listen = "127.0.0.1:0";
              return o;
            }(),
            [](const core::http::Request&) {
              return core::http::Problems("https://keyline.example/problems/backupdb/")(404, "not-found",
                                                                                        "no record");
            }) {
    server.start();
  }
};

}  // namespace keyline::test
