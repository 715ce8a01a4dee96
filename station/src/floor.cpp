// The crypto floor of the line benchmark (scripts/bench_line.sh): the cryptography a device costs the
// station and the device, without APDUs, databases or the network, so the line's devices/s can be
// reported as a ratio against what the same machine can do at best in the same run.
#include <botan/curve25519.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>
#include <botan/system_rng.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/data_package.h"
#include "keyline/core/imei.h"
#include "keyline/station/keys.h"
#include "keyline/station/line.h"

namespace keyline::station {

double crypto_floor(const StationConfig& config, std::int64_t devices, int threads) {
  threads = std::max(1, threads);
  auto keys = StationKeys::open(config, static_cast<std::size_t>(threads) + 1);
  std::atomic<std::int64_t> next{0};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      Botan::RandomNumberGenerator& rng = Botan::system_rng();  // as the station's personalization
      const core::SecureBytes chip_key = rng.random_vec(32);
      const Botan::EC_Group group("secp256r1");
      for (std::int64_t i = next++; i < devices; i = next++) {
        const auto imei = core::Imei::from_tac_serial("35780502", static_cast<std::uint32_t>(i % 1000000));
        std::uint8_t raw[core::kChipIdSize] = {0x4B, 0x4C, 0, 1};
        for (int b = 0; b < 6; ++b) raw[4 + b] = static_cast<std::uint8_t>(i >> (8 * b));
        const auto chip = core::ChipId::from_bytes(raw, sizeof raw);
        // The same key generation, two token signatures and sealing as a device on the line.
        Botan::ECDSA_PrivateKey identity(rng, group);
        Botan::Curve25519_PrivateKey transport(rng);
        const auto id_cert = core::issue_identity_certificate_der(keys.device_ca_cert, *keys.device_ca_key,
                                                                  identity, imei, chip, config.hw_type, rng);
        const auto tr_cert = core::issue_transport_certificate_der(
            keys.device_ca_cert, *keys.device_ca_key, transport, imei, chip, config.hw_type, rng);
        core::DataPackage pkg;
        pkg.imei = imei;
        pkg.station_id = config.station_id;
        pkg.identity_cert = id_cert;
        pkg.transport_cert = tr_cert;
        pkg.ca_chain.push_back(keys.device_ca_cert.BER_encode());
        pkg.identity_key = Botan::PKCS8::BER_encode(identity);
        pkg.transport_key = transport.get_x();
        pkg.comm_key = rng.random_vec(32);
        const auto sealed = core::seal_backup(chip_key, chip, pkg.encode());
        if (sealed.empty()) std::abort();
      }
    });
  }
  for (auto& t : pool) t.join();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(devices) / secs;
}

}  // namespace keyline::station
