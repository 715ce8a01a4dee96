// Settings of keyline-backupdb. main.cpp fills them from flags, KEYLINE_BACKUPDB_* environment
// variables or a config file (CLI11 does the precedence: flag > environment > file > default).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <botan/secmem.h>

#include "keyline/backupdb/read_pool.h"
#include "keyline/core/error.h"
#include "keyline/core/http_server.h"

namespace keyline::backupdb {

// Part-specific error codes (range 3000-3999, error.h).
namespace errc {
constexpr auto PublishConflict = static_cast<core::ErrorCode>(3001);  // different content for a chip/IMEI
constexpr auto Tls = static_cast<core::ErrorCode>(3020);              // TLS material unusable
constexpr auto LogCorrupt = static_cast<core::ErrorCode>(3030);  // stored tiles disagree with the last checkpoint
}  // namespace errc

// The transparency log (docs/transparency.md, "The public DB's log"): the log key on a PKCS#11
// token, the origin it signs checkpoints for, and the integrator's batching.
struct LogSettings {
  std::string token_module;    // PKCS#11 module of the public DB's token
  std::string token_label;
  std::string token_pin_file;  // the user PIN, read from this file (else KEYLINE_BACKUPDB_LOG_TOKEN_PIN)
  std::string key_label = "keyline-log";
  // The checkpoint origin and key name: no spaces or '+' (C2SP signed-note key names), no host name
  // (mirrors serve the same log under other names).
  std::string origin = "keyline-public-db";
  bool disabled = false;       // serve --no-log (wins over the token settings): no integrator, no log routes;
                               // records are still sequenced, so a later serve with the log integrates them
  std::size_t batch_entries = 256;   // a checkpoint once this many entries wait ...
  int batch_ms = 250;                // ... or this long after the first one arrived
  std::size_t max_batch = 16384;     // entries per checkpoint while catching up
  // serve --witness: C2SP tlog-witness URLs each new checkpoint is pushed to (docs/transparency.md,
  // "Witness"); --witness-ca: the CA of their https certificates.
  std::vector<std::string> witnesses;
  std::string witness_ca;
  bool configured() const { return !token_module.empty() || !token_label.empty(); }
};

// The connection settings (threads, caps, deadlines) are core::http::ListenerSettings: connections
// cost a descriptor, not a thread, so threads only bound the requests handled at once.
struct Config : core::http::ListenerSettings {
  std::string db;                   // libpq conninfo (no password: see db_password_file)
  // serve --replica / --max-replica-lag-ms: streaming replicas of `db` that take the reads
  // (read_pool.h); they share its roles, so the same password.
  ReplicaSettings replicas;
  std::string db_password_file;     // the database password, read from this file (else PGPASSWORD/PGPASSFILE)
  // migrate: the keyline_backupdb role's password (enables LOGIN). Set here by a library caller, or
  // read by migrate() from role_password_file, else KEYLINE_BACKUPDB_ROLE_PASSWORD.
  Botan::secure_vector<std::uint8_t> role_password;
  std::string role_password_file;
  std::string listen = "0.0.0.0:8443";
  // The operations listener: /metrics and /healthz, plain HTTP, loopback by default (docs/operations.md).
  std::string ops_listen = "127.0.0.1:9443";
  std::string tls_cert;             // server certificate chain (PEM)
  std::string tls_key;              // its private key (PEM)
  std::string station_ca;           // issuer(s) of station certificates allowed to publish (PEM)
  // serve --station-deny: station certificates that may no longer publish (a retired TLS certificate
  // whose key is still on a token), re-read when it changes (backupdb/src/station_auth.h).
  std::string station_deny;
  std::vector<std::string> trust;   // PEM files with the device root(s): anchors for record validation
  std::vector<std::string> trusted_proxies;  // peers whose X-Forwarded-For names the client
  bool plain_http = false;          // behind a TLS-terminating proxy only; publishing is then refused
  int db_pool = 16;                 // PostgreSQL connections (reads hit the cache first)
  std::size_t body_limit = 256 * 1024;  // a record is a few KiB; anything far larger is refused (413)
  double rate = 0;                  // requests per second per client (address, or station id); 0 = off
  std::size_t rate_clients = 100000;    // token buckets kept (least recently used evicted beyond)
  std::size_t cache_entries = 200000;   // immutable records, so the LRU is always correct
  bool preload = false;             // fill the cache from the database before listening
  std::size_t read_batch = 1;       // cache misses sharing one round trip at most (1: one each; docs/scale.md)
  std::string log = "stderr";       // access/error log: a path, "stderr" or "off"
  LogSettings tlog;                 // the transparency log
};

}  // namespace keyline::backupdb
