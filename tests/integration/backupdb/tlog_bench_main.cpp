// The publishing half of the transparency log benchmark (scripts/bench_tlog.sh): well-formed records
// under a throwaway device PKI, and a station that publishes them over mutual TLS from several
// connections at once. Not a test: the figures are the bench script's ratios.
//
//   bench_tlog_publish prepare DIR N                      PKI, TLS files and N records (DIR/records.jsonl)
//   bench_tlog_publish publish URL DIR THREADS FIRST COUNT  records FIRST.. FIRST+COUNT-1; prints records/s
#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/http.h"
#include "keyline/core/record.h"

using namespace keyline::core;

namespace {

std::unique_ptr<Botan::ECDSA_PrivateKey> new_key(Botan::RandomNumberGenerator& rng) {
  return std::make_unique<Botan::ECDSA_PrivateKey>(rng, Botan::EC_Group("secp256r1"));
}

void write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
}

int prepare(const std::string& dir, std::uint32_t n) {
  Botan::AutoSeeded_RNG rng;
  auto root_key = new_key(rng);
  const auto root = make_root_certificate(*root_key, "Bench Root", "keyline bench", rng);
  auto ca_key = new_key(rng);
  const auto ca = make_ca_certificate(root, *root_key, *ca_key, "Bench Device CA", "keyline bench", 0, rng);
  write_file(dir + "/root.pem", to_pem(root));
  auto svc_key = new_key(rng);
  const auto svc = make_ca_certificate(root, *root_key, *svc_key, "Bench Service CA", "keyline bench", 0, rng);
  write_file(dir + "/service_ca.pem", to_pem(svc));
  auto srv_key = new_key(rng);
  write_file(dir + "/server.pem", to_pem(issue_tls_certificate(svc, *svc_key, *srv_key, "backupdb", {"127.0.0.1"},
                                                               TlsRole::Server, rng)));
  write_file(dir + "/server.key", Botan::PKCS8::PEM_encode(*srv_key));
  auto st_key = new_key(rng);
  write_file(dir + "/station.pem", to_pem(issue_station_certificate(svc, *svc_key, *st_key, "bench-station", rng)));
  write_file(dir + "/station.key", Botan::PKCS8::PEM_encode(*st_key));
  std::ofstream out(dir + "/records.jsonl", std::ios::binary);
  for (std::uint32_t i = 0; i < n; ++i) {
    char chip[32];
    std::snprintf(chip, sizeof chip, "47905BE%013u", i);
    Record r;
    r.chip_id = ChipId::parse(chip);
    r.imei = Imei::from_tac_serial("35780509", i);
    const std::string pt = "bench data package " + std::to_string(i);
    r.backup = seal_backup(SecureBytes(32, 0x42), r.chip_id, SecureBytes(pt.begin(), pt.end()));
    auto dev_key = new_key(rng);
    const auto cert = issue_identity_certificate(ca, *ca_key, *dev_key, r.imei, r.chip_id, kDefaultHwType, rng);
    r.certificates = {cert.BER_encode(), ca.BER_encode()};
    out << r.to_json() << "\n";
  }
  return 0;
}

int publish(const std::string& url, const std::string& dir, int threads, std::size_t first, std::size_t count) {
  std::vector<std::string> records;
  std::ifstream in(dir + "/records.jsonl", std::ios::binary);
  for (std::string line; std::getline(in, line);) records.push_back(line);
  if (first + count > records.size()) {
    std::cerr << "bench_tlog_publish: only " << records.size() << " records prepared\n";
    return 2;
  }
  std::atomic<std::size_t> next{first};
  std::atomic<int> failed{0};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      http::ClientOptions o;
      o.base_url = url;
      o.ca_file = dir + "/service_ca.pem";
      o.cert_file = dir + "/station.pem";
      o.key_file = dir + "/station.key";
      http::Client c(o);
      for (std::size_t i = next++; i < first + count; i = next++)
        if (c.post("/v1/records", records[i], "application/json").status != 201) ++failed;
    });
  }
  for (auto& t : ts) t.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (failed) std::cerr << "bench_tlog_publish: " << failed << " publishes not 201\n";
  std::printf("%.1f\n", static_cast<double>(count) / s);
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 3 && a[0] == "prepare") return prepare(a[1], static_cast<std::uint32_t>(std::stoul(a[2])));
    if (a.size() == 6 && a[0] == "publish")
      return publish(a[1], a[2], std::stoi(a[3]), std::stoul(a[4]), std::stoul(a[5]));
  } catch (const std::exception& e) {
    std::cerr << "bench_tlog_publish: " << e.what() << "\n";
    return 1;
  }
  std::cerr << "usage: bench_tlog_publish prepare DIR N | publish URL DIR THREADS FIRST COUNT\n";
  return 2;
}
