// keyline-kps: the key provisioning server (docs/kps.md). It relays a key from a source device to a
// target device without ever holding anything that opens it: devices authenticate with their identity
// certificates (core/device_auth.h), the target names its transport certificate, the source seals the
// key to it with HPKE, the target fetches and acknowledges, and the ciphertext is deleted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "keyline/core/error.h"
#include "keyline/core/http_server.h"
#include "keyline/core/migrate.h"

namespace keyline::kps {

// KPS error codes, 6000-6999 (error.h reserves the range for the KPS).
namespace errc {
constexpr core::ErrorCode Tls = static_cast<core::ErrorCode>(6001);          // TLS server setup failed
constexpr core::ErrorCode BadPolicy = static_cast<core::ErrorCode>(6002);    // the policy file does not parse
constexpr core::ErrorCode Refused = static_cast<core::ErrorCode>(6010);      // a device client got a 4xx from the KPS
}  // namespace errc

// The connection settings (threads, caps, deadlines) are core::http::ListenerSettings.
struct Config : core::http::ListenerSettings {
  std::string db;                    // libpq conninfo (no password: see db_password_file)
  std::string db_password_file;      // the database password, read from this file (else PGPASSWORD/PGPASSFILE)
  std::string listen = "127.0.0.1:8444";
  // The operations listener: /metrics and /healthz, plain HTTP, loopback by default (docs/kps.md).
  std::string ops_listen = "127.0.0.1:9444";
  std::vector<std::string> trusted_proxies;  // peers whose X-Forwarded-For names the client (log only)
  std::string tls_cert, tls_key;     // server certificate chain and key (PEM)
  std::vector<std::string> trust;    // manufacturer root(s): anchors of device identity chains
  std::string policy;                // policy file (policy.h)
  std::vector<std::string> allow;    // extra "SOURCE:TARGET" pairs allowed both ways of the check
  int db_pool = 4;
  std::size_t body_limit = 64 * 1024;
  std::int64_t max_skew = 300;       // seconds of clock skew accepted on signed requests
  std::string log = "stderr";        // request log: path, stderr or off
};

const std::vector<core::Migration>& embedded_migrations();
int migrate(const Config& config);
// Runs until SIGINT/SIGTERM.
int serve(const Config& config);

}  // namespace keyline::kps
