// Test PKI for the HTTP server tests and the flood target: a root CA, a server certificate for
// 127.0.0.1 and a station client certificate, written as PEM into a fresh temp dir.
#pragma once

#include <string>

namespace keyline::test {

struct TlsMaterial {
  std::string dir;
  std::string ca_file;      // the root (issues both certificates)
  std::string cert_file;    // server chain: leaf, then the service CA
  std::string key_file;
  std::string client_cert;  // a station client certificate
  std::string client_key;
  std::string client_der;   // the client certificate's DER (what the handler must see)

  TlsMaterial();
  ~TlsMaterial();
  TlsMaterial(const TlsMaterial&) = delete;
  TlsMaterial& operator=(const TlsMaterial&) = delete;
};

}  // namespace keyline::test
