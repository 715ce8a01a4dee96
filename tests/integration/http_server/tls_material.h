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

// A client chain file: the station certificate, then `fillers` copies of its issuer (what an
// attacker pads a Certificate message with). The key is material.client_key.
std::string write_padded_client_chain(const TlsMaterial& material, std::size_t fillers);

// A client chain whose every link is dear to check: `links` CA certificates over one RSA-3072 key
// whose public exponent is as long as its modulus (so each signature check costs a private-key
// operation), the last self-signed, then a fresh ECDSA leaf. Writes <dir>/costly.pem and
// <dir>/costly.key; returns the chain file.
std::string write_costly_client_chain(const TlsMaterial& material, std::size_t links);

}  // namespace keyline::test
