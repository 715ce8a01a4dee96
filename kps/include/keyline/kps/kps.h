// keyline-kps: the key provisioning server (docs/kps.md). It relays a key from a source device to a
// target device without ever holding anything that opens it, nor anything that lets it choose the key a
// device stores: devices authenticate with their identity certificates (core/device_auth.h), the KPS
// takes the target's transport certificate from the public DB, the source seals the key to it and signs
// the KLKE envelope (core/kps_envelope.h), the target verifies, opens and acknowledges, and the envelope
// is deleted. Every answer is signed with the KPS's key on a PKCS#11 token (RFC 9421).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "keyline/core/bytes.h"
#include "keyline/core/error.h"
#include "keyline/core/http_server.h"
#include "keyline/core/migrate.h"

namespace keyline::kps {

// KPS error codes, 6000-6999 (error.h reserves the range for the KPS).
namespace errc {
constexpr core::ErrorCode Tls = static_cast<core::ErrorCode>(6001);          // TLS server setup failed
constexpr core::ErrorCode BadPolicy = static_cast<core::ErrorCode>(6002);    // the policy file does not parse
constexpr core::ErrorCode Refused = static_cast<core::ErrorCode>(6010);      // a device client got a 4xx from the KPS
constexpr core::ErrorCode NoAccount = static_cast<core::ErrorCode>(6020);    // account/device commands: no such row
}  // namespace errc

// The KPS signing key on a PKCS#11 token (docs/kps.md "Signed answers").
struct SignKeySettings {
  std::string module;       // PKCS#11 module path
  std::string token_label;
  std::string key_label = "kps-sign";
  std::string pin_file;     // the user PIN (else KEYLINE_KPS_SIGN_PIN)
  bool enabled() const { return !token_label.empty(); }
};

// The connection settings (threads, caps, deadlines) are core::http::ListenerSettings.
struct Config : core::http::ListenerSettings {
  std::string db;                    // libpq conninfo (no password: see db_password_file)
  std::string db_password_file;      // the database password, read from this file (else PGPASSWORD/PGPASSFILE)
  std::string listen = "127.0.0.1:8444";
  // The operations listener: /metrics and /healthz, plain HTTP, loopback by default (docs/kps.md).
  std::string ops_listen = "127.0.0.1:9444";
  std::vector<std::string> trusted_proxies;  // peers whose X-Forwarded-For names the client (log, rate limit)
  std::string tls_cert, tls_key;     // server certificate chain and key (PEM)
  std::vector<std::string> trust;    // manufacturer root(s): anchors of device identity chains
  std::string policy;                // policy file (policy.h)
  std::vector<std::string> allow;    // extra "SOURCE:TARGET:LABELGLOB" allow rules
  std::string backupdb;              // public DB base URL: the directory of transport certificates
  std::string backupdb_ca;           // CA file of the public DB's TLS certificate
  std::string webhook_ca;            // CA file the webhook receivers' TLS certificates chain to (none: no webhooks)
  SignKeySettings sign;
  int db_pool = 4;
  std::size_t body_limit = 64 * 1024;
  std::int64_t max_skew = 300;       // seconds of clock skew accepted on signed requests
  std::int64_t transfer_ttl = 7 * 24 * 3600;  // seconds, 60..30 days
  int purge_interval_s = 30;         // 1..60
  int max_waiters = 0;               // long polls held at once; 0: half of threads
  int webhook_tries = 6;             // then dead-lettered
  // Requests per second per client address (0 = no limit), checked before authentication: an
  // anonymous flood costs neither a signature check nor a database round trip (docs/kps.md).
  double rate = 0;
  double burst = 0;                  // bucket size; 0: max(rate, 1)
  std::size_t rate_clients = 100000;  // token buckets kept (least recently used evicted beyond)
  std::int64_t clock_offset_s = 0;   // TEST ONLY: shifts the KPS's clock (docs/kps.md)
  std::string log = "stderr";        // request log: path, stderr or off
};

const std::vector<core::Migration>& embedded_migrations();
int migrate(const Config& config);

// A running KPS: the API and operations listeners and the background loops (purge, webhooks, the
// NOTIFY listener). Tests run two on one database.
class Instance {
 public:
  explicit Instance(const Config& config);  // checks settings, loads trust, policy and the signing key
  ~Instance();                              // stops
  Instance(const Instance&) = delete;
  Instance& operator=(const Instance&) = delete;
  void start();
  void stop();
  std::uint16_t port() const;      // the API listener's (after start)
  std::uint16_t ops_port() const;
  int serve_until_stopped();       // start, print the listening lines, wait for SIGINT/SIGTERM, stop

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

// Runs until SIGINT/SIGTERM.
int serve(const Config& config);

// ---- administration (docs/kps.md "Callers") ----
// Creates the account and prints nothing: returns the token (shown once; only its SHA-256 is stored).
core::SecureBytes account_add(const Config& config, const std::string& name, const std::vector<std::string>& chips);
void account_devices(const Config& config, const std::string& name, const std::vector<std::string>& add,
                     const std::vector<std::string>& remove);
void account_remove(const Config& config, const std::string& name);
// Purges the chip's open transfers and removes its notices, nonces, webhook and ownership rows; returns
// the number of transfers purged.
int device_remove(const Config& config, const std::string& chip);
// Generates (or finds) the EC P-256 signing key on the token and writes its public key (PEM) to out.
// Returns the keyid (hex SHA-256 of the SubjectPublicKeyInfo DER).
std::string sign_key_init(const SignKeySettings& sign, const std::string& out);

}  // namespace keyline::kps
