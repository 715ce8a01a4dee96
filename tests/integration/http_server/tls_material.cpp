#include "tls_material.h"

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/numthry.h>
#include <botan/pkcs8.h>
#include <botan/rsa.h>
#include <botan/x509_ca.h>
#include <botan/x509self.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "keyline/core/cert_profile.h"

namespace keyline::test {
namespace {

void write(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary) << data;
}

}  // namespace

TlsMaterial::TlsMaterial() {
  char tmpl[] = "/tmp/kl-http-server-test.XXXXXX";
  dir = mkdtemp(tmpl);
  Botan::AutoSeeded_RNG rng;
  const Botan::EC_Group group("secp256r1");
  Botan::ECDSA_PrivateKey root_key(rng, group), svc_key(rng, group), srv_key(rng, group), cli_key(rng, group);
  const auto root = core::make_root_certificate(root_key, "Test Root", "keyline test", rng);
  const auto svc = core::make_ca_certificate(root, root_key, svc_key, "Test Service CA", "keyline test", 0, rng);
  const auto srv = core::issue_tls_certificate(svc, svc_key, srv_key, "server", {"127.0.0.1", "localhost"},
                                               core::TlsRole::Server, rng);
  const auto cli = core::issue_station_certificate(svc, svc_key, cli_key, "station-1", rng);
  ca_file = dir + "/ca.pem";
  cert_file = dir + "/server.pem";
  key_file = dir + "/server.key";
  client_cert = dir + "/client.pem";
  client_key = dir + "/client.key";
  write(ca_file, root.PEM_encode());
  write(cert_file, srv.PEM_encode() + svc.PEM_encode());
  write(key_file, Botan::PKCS8::PEM_encode(srv_key));
  write(client_cert, cli.PEM_encode() + svc.PEM_encode());
  write(client_key, Botan::PKCS8::PEM_encode(cli_key));
  const auto der = cli.BER_encode();
  client_der.assign(der.begin(), der.end());
}

TlsMaterial::~TlsMaterial() {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

std::string write_padded_client_chain(const TlsMaterial& m, std::size_t fillers) {
  std::ifstream in(m.client_cert, std::ios::binary);
  const std::string chain((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto issuer = chain.substr(chain.find("-----BEGIN", 1));  // the file is leaf, then its issuer
  std::string out = chain;
  for (std::size_t i = 0; i < fillers; ++i) out += issuer;
  const auto path = m.dir + "/padded-" + std::to_string(fillers) + ".pem";
  write(path, out);
  return path;
}

namespace {

// RSA over a 3072-bit modulus (OpenSSL allows any exponent up to that size, RSA_R_BAD_E_VALUE
// above it) with an exponent nearly as long: verifying costs a full-length modular exponentiation.
Botan::RSA_PrivateKey costly_rsa_key(Botan::RandomNumberGenerator& rng) {
  const auto p = Botan::random_prime(rng, 1536);
  const auto q = Botan::random_prime(rng, 1536);
  const auto phi = (p - 1) * (q - 1);
  for (;;) {
    Botan::BigInt e(rng, 3000);
    e.set_bit(0);
    if (Botan::gcd(e, phi) == 1) return Botan::RSA_PrivateKey(p, q, e);
  }
}

}  // namespace

std::string write_costly_client_chain(const TlsMaterial& m, std::size_t links) {
  Botan::AutoSeeded_RNG rng;
  const auto key = costly_rsa_key(rng);
  const auto now = std::chrono::system_clock::now();
  const Botan::X509_Time from(now - std::chrono::hours(1)), until(now + std::chrono::hours(24));
  Botan::X509_Cert_Options top("Costly " + std::to_string(links));
  top.CA_key();
  std::vector<Botan::X509_Certificate> cas{Botan::X509::create_self_signed_cert(top, key, "SHA-256", rng)};
  for (std::size_t i = links - 1; i >= 1; --i) {  // each signed by the one above it, same key
    Botan::X509_Cert_Options o("Costly " + std::to_string(i));
    o.CA_key();
    const Botan::X509_CA ca(cas.back(), key, "SHA-256", rng);
    cas.push_back(ca.sign_request(Botan::X509::create_cert_req(o, key, "SHA-256", rng), rng, from, until));
  }
  const Botan::ECDSA_PrivateKey leaf_key(rng, Botan::EC_Group("secp256r1"));
  const Botan::X509_Cert_Options leaf_opts("costly-station");
  const Botan::X509_CA ca(cas.back(), key, "SHA-256", rng);
  const auto leaf = ca.sign_request(Botan::X509::create_cert_req(leaf_opts, leaf_key, "SHA-256", rng), rng, from, until);
  std::string pem = leaf.PEM_encode();
  for (auto it = cas.rbegin(); it != cas.rend(); ++it) pem += it->PEM_encode();
  write(m.dir + "/costly.pem", pem);
  write(m.dir + "/costly.key", Botan::PKCS8::PEM_encode(leaf_key));
  return m.dir + "/costly.pem";
}

}  // namespace keyline::test
