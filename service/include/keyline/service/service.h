// keyline-service: the device service server (issue #16, docs/service.md). Shipped devices call out
// over HTTPS; the server answers with SCP03 APDU scripts (Amendment D, level 33, S16) keyed by static
// keys it derives on its token from the master and the chip ID, applies the device's pending campaign
// jobs (configuration items, software modules) and reads the device's status back.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "keyline/core/hpke.h"

#include "keyline/core/http_server.h"
#include "keyline/core/migrate.h"

namespace keyline::service {

// Where the service's master versions live: the service token (a mirror of the station's master,
// docs/custody.md). Version 1 is "keyline-master" (HMAC), version N >= 2 "keyline-master-vN" (AES-256).
struct TokenConfig {
  std::string module;    // PKCS#11 module path
  std::string label;     // token label
  std::string pin_file;  // user PIN file (else KEYLINE_SERVICE_PIN)
  std::string master_label = "keyline-master";
};

struct Config : core::http::ListenerSettings {
  std::string db;  // libpq conninfo of the service DB (no password)
  std::string db_password_file;
  std::string public_db;           // https URL of the public backup DB
  std::string public_db_ca;        // CA of the public DB's TLS certificate
  std::vector<std::string> trust;  // manufacturer root(s): device records and module signers
  std::string listen = "127.0.0.1:8445";
  std::string ops_listen = "127.0.0.1:9445";
  std::vector<std::string> trusted_proxies;
  std::string tls_cert, tls_key;
  TokenConfig token;
  int db_pool = 4;
  int token_sessions = 8;
  std::size_t body_limit = 64 * 1024;
  int session_ttl_s = 60;
  int jobs_per_session = 4;  // pending jobs one session applies, oldest first
  std::string log = "stderr";
};

const std::vector<core::Migration>& embedded_migrations();
int migrate(const Config& config);
int serve(const Config& config);  // until SIGINT/SIGTERM

// The server without the signal loop (serve() wraps it; tests and the bench start it in process).
class Server {
 public:
  explicit Server(
      const Config& config);  // opens the token and the DB; throws ConfigError, DbError, Pkcs11Error
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  void start();
  void stop();
  std::uint16_t port() const;
  std::uint16_t ops_port() const;
  int run_until_stopped();  // serve_until_stopped over both listeners

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

// `keyline-service campaign`: queue one job per IMEI (idempotent: rerunning resumes; docs/service.md).
struct CampaignRequest {
  std::string name;
  std::string item;                // "0F01=FILE": a configuration item (DGI 0Fxx)
  std::string module;              // or a signed module file (checked against --trust first)
  std::vector<std::string> trust;  // manufacturer root(s), for --module
  int put_key = 0;                 // or rotate the devices' communication key to this version (2)
  std::string imeis_file;          // one IMEI a line
};
void campaign_enqueue(const Config& config, const CampaignRequest& request, std::ostream& out);
// Progress and per-device results; returns 0 when every job is done (applied or failed), 1 otherwise.
int campaign_status(const Config& config, const std::string& name, bool json, std::ostream& out);

// `keyline-service message` (docs/service.md "Messages from a third party"): seals a file to a device's
// transport key with HPKE (core/hpke.h, base mode; info kMessageInfo, aad the IMEI's 15 ASCII digits) and
// writes enc || ciphertext to `out`, whole or not at all. The key is the transport certificate of the
// device's record, fetched by IMEI from the public DB and validated to `trust` (core::validate_record).
// Throws Error(UnknownImei) for a 404, Error(RecordInvalid) for a record that does not verify or has no
// transport certificate, Error(PublicDb) for another answer, core's Network error when it cannot connect.
constexpr const char* kMessageInfo = core::hpke::kServiceMessageInfo;
struct MessageRequest {
  std::string imei;
  std::string in, out;                 // the message; the sealed file (mode 0644)
  std::string backupdb, backupdb_ca;   // https URL of the public DB, the CA of its TLS certificate
  std::vector<std::string> trust;      // manufacturer root(s)
};
void message_seal(const MessageRequest& request, std::ostream& out);

// `keyline-service module sign`: the module format of core/service_module.h, signed on the token.
struct ModuleSignRequest {
  std::string in, name, out, certificate, key_label = "keyline-code-signing";
  std::uint32_t version = 0;
};
void module_sign(const TokenConfig& token, const ModuleSignRequest& request, std::ostream& out);

// `keyline-service module keygen`: the code-signing key pair made on the token through
// core::Pkcs11Token::generate_ec_p256, whose template names every usage attribute (private half sign
// only, public half verify only), not left to the token's defaults (SoftHSM turns on the usages a
// template omits). Throws Pkcs11Error when a private key with the label exists.
struct ModuleKeygenRequest {
  std::string key_label = "keyline-code-signing";
  std::string key_id = "C5C5";  // CKA_ID in hex
};
void module_keygen(const TokenConfig& token, const ModuleKeygenRequest& request, std::ostream& out);

}  // namespace keyline::service
