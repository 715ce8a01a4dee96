#include "tls_material.h"

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

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

}  // namespace keyline::test
