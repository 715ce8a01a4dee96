// Writes what the flood tests serve into a directory: a device root and Device CA, a service CA, a
// server certificate for 127.0.0.1 (the public DB and the KPS), a station certificate, and one
// valid record (record.json) for chip 47905000000000000001.
#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/record.h"

using namespace keyline::core;

namespace {

void write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
  if (!f) throw std::runtime_error("cannot write " + path);
}

std::unique_ptr<Botan::ECDSA_PrivateKey> new_key(Botan::RandomNumberGenerator& rng) {
  return std::make_unique<Botan::ECDSA_PrivateKey>(rng, Botan::EC_Group("secp256r1"));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: flood_fixture DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  Botan::AutoSeeded_RNG rng;
  auto root_key = new_key(rng);
  const auto root = make_root_certificate(*root_key, "Flood Root", "keyline test", rng);
  auto ca_key = new_key(rng);
  const auto device_ca = make_ca_certificate(root, *root_key, *ca_key, "Flood Device CA", "keyline test", 0, rng);
  auto svc_key = new_key(rng);
  const auto svc = make_ca_certificate(root, *root_key, *svc_key, "Flood Service CA", "keyline test", 0, rng);
  write_file(dir + "/root.pem", to_pem(root));
  write_file(dir + "/service_ca.pem", to_pem(svc));
  auto srv_key = new_key(rng);
  write_file(dir + "/server.pem",
             to_pem(issue_tls_certificate(svc, *svc_key, *srv_key, "flood", {"127.0.0.1", "localhost"},
                                          TlsRole::Server, rng)));
  write_file(dir + "/server.key", Botan::PKCS8::PEM_encode(*srv_key));
  auto st_key = new_key(rng);
  write_file(dir + "/station.pem", to_pem(issue_station_certificate(svc, *svc_key, *st_key, "flood-station", rng)));
  write_file(dir + "/station.key", Botan::PKCS8::PEM_encode(*st_key));

  Record r;
  r.chip_id = ChipId::parse("47905000000000000001");
  r.imei = Imei::parse("357805023984942");
  const SecureBytes chip_key(32, 0x42);
  const std::string pt = "flood test data package";
  r.backup = seal_backup(chip_key, r.chip_id, SecureBytes(pt.begin(), pt.end()));
  auto dev_key = new_key(rng);
  const auto cert = issue_identity_certificate(device_ca, *ca_key, *dev_key, r.imei, r.chip_id, kDefaultHwType, rng);
  r.certificates = {cert.BER_encode(), device_ca.BER_encode()};
  write_file(dir + "/record.json", r.to_json());
  return 0;
}
