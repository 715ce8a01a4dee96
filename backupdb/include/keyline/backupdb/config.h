// Settings of keyline-backupdb. main.cpp fills them from flags, KEYLINE_BACKUPDB_* environment
// variables or a config file (CLI11 does the precedence: flag > environment > file > default).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "keyline/core/error.h"

namespace keyline::backupdb {

// Part-specific error codes (range 3000-3999, error.h).
namespace errc {
constexpr auto PublishConflict = static_cast<core::ErrorCode>(3001);  // different content for a chip/IMEI
constexpr auto Tls = static_cast<core::ErrorCode>(3020);              // TLS material unusable
}  // namespace errc

struct Config {
  std::string db;                   // libpq conninfo: the owner for migrate, the server role for serve
  std::string role_password;        // migrate: sets the keyline_backupdb role's password (enables LOGIN)
  std::string listen = "0.0.0.0:8443";
  std::string tls_cert;             // server certificate chain (PEM)
  std::string tls_key;              // its private key (PEM)
  std::string client_ca;            // station CA (PEM): issuer of client certificates allowed to publish
  std::vector<std::string> trust;   // PEM files with the device root(s): anchors for record validation
  bool plain_http = false;          // behind a TLS-terminating proxy only; publishing is then refused
  // Poco's HTTPServer holds one thread per keep-alive connection, so threads bounds the number of
  // clients served at once: 64 keep-alive clients (the benchmark's and a line's worth of stations
  // and service servers) plus 8 for short-lived ones. Connections beyond threads wait in the queue
  // (max_connections) until a thread frees up; beyond that they are refused.
  int threads = 72;
  int max_connections = 256;
  int db_pool = 16;                 // PostgreSQL connections (reads hit the cache first)
  std::size_t body_limit = 256 * 1024;  // a record is a few KiB; anything far larger is refused (413)
  double rate = 0;                  // requests per second per client (IP, or station certificate); 0 = off
  std::size_t cache_entries = 200000;   // immutable records, so the LRU is always correct
  bool preload = false;             // fill the cache from the database before listening
  std::string log = "stderr";       // access/error log: a path, "stderr" or "off"
};

}  // namespace keyline::backupdb
