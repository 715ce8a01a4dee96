// The crypto floor of one KPS transfer, for scripts/bench_kps.sh: every public-key operation a transfer
// costs on this machine, run back to back on one thread with the real code (no network, no database),
// so the measured transfers/s can be put next to what the CPU allows. Per transfer (docs/kps.md flow):
//   device requests signed      kRequests   (source: transfer, key upload, notice ack, key-acknowledged
//                                            ack; target: transfer, key, ack, notice ack; polls shared)
//   KPS verifies each request   kRequests   (device_auth::verify_request: chain leaf + signature)
//   KPS signs each answer       kRequests   (RFC 9421, Botan key here; the KPS signs on SoftHSM)
//   agent verifies each answer  kRequests
//   source checks the target's transport chain, seals and signs the KLKE envelope
//   KPS checks the envelope's source chain and signature; the target does it again and opens it
// Usage: bench_kps_floor [SECONDS]   prints "floor_ms_per_transfer X" and "floor_transfers_per_s_per_core Y"
#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/ecdsa.h>

#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>

#include "keyline/core/cert_profile.h"
#include "keyline/core/device_auth.h"
#include "keyline/core/hpke.h"
#include "keyline/core/http_signature.h"
#include "keyline/core/kps_envelope.h"

using namespace keyline;
namespace hs = core::http_signature;

namespace {

constexpr int kRequests = 8;
constexpr std::int64_t kNow = 1800000000;

struct Device {
  std::unique_ptr<Botan::ECDSA_PrivateKey> key;
  std::vector<core::Bytes> chain;
  core::ChipId chip;
  core::hpke::KeyPair transport;
  std::string transport_pem;
};

struct World {
  Botan::AutoSeeded_RNG rng;
  Botan::ECDSA_PrivateKey root_key{rng, Botan::EC_Group("secp256r1")};
  Botan::ECDSA_PrivateKey ca_key{rng, Botan::EC_Group("secp256r1")};
  Botan::ECDSA_PrivateKey kps_key{rng, Botan::EC_Group("secp256r1")};
  Botan::X509_Certificate root = core::make_root_certificate(root_key, "bench root", "Bench", rng);
  Botan::X509_Certificate ca = core::make_ca_certificate(root, root_key, ca_key, "bench CA", "Bench", 0, rng);

  Device device(const std::string& chip) {
    Device d;
    d.chip = core::ChipId::parse(chip);
    d.key = std::make_unique<Botan::ECDSA_PrivateKey>(rng, Botan::EC_Group("secp256r1"));
    const auto imei = core::Imei::parse("490154203237518");
    d.chain = {core::issue_identity_certificate(ca, ca_key, *d.key, imei, d.chip, core::kDefaultHwType, rng).BER_encode(),
               ca.BER_encode()};
    d.transport = core::hpke::generate_key_pair();
    Botan::Curve25519_PublicKey pub(std::vector<std::uint8_t>(d.transport.public_key.begin(), d.transport.public_key.end()));
    d.transport_pem = core::to_pem(core::issue_transport_certificate(ca, ca_key, pub, imei, d.chip, core::kDefaultHwType, rng)) +
                      core::to_pem(ca);
    return d;
  }
};

// One signed request and its signed answer: device signs, KPS verifies, KPS signs, device verifies.
void round_trip(World& w, const Device& d, const hs::Signer& kps_signer) {
  auto h = core::device_auth::sign_request(*d.key, d.chain, "GET", "/v1/notifications", "", kNow, w.rng);
  core::device_auth::verify_request([&](const std::string& n) { auto it = h.find(n); return it == h.end() ? std::string() : it->second; },
                                    "GET", "/v1/notifications", "", {w.root}, kNow);
  hs::Headers req(h.begin(), h.end()), resp;
  const std::string body = "{\"notifications\":[]}";
  hs::sign_kps_response(200, resp, body, req, "kid", kNow, hs::Algorithm::EcdsaP256Sha256, kps_signer);
  hs::verify_kps_response(200, resp, body, req, w.kps_key, hs::Algorithm::EcdsaP256Sha256, kNow);
}

void envelope(World& w, const Device& source, const Device& target, const std::string& id) {
  const auto certs = core::parse_certificates_pem(target.transport_pem);
  core::verify_chain(certs[0], {certs.begin() + 1, certs.end()}, {w.root});  // the source's S3 check
  const core::kps_envelope::Header header{id, "bench-key", source.chip, target.chip};
  const auto wire = core::kps_envelope::build(header, target.transport.public_key, core::SecureBytes(32, 1), source.chain,
                                              core::kps_envelope::botan_identity_signer(*source.key, w.rng));
  const auto e = core::kps_envelope::parse(wire);
  core::kps_envelope::verify_source(e, {w.root});  // the KPS's sanity check
  (void)core::kps_envelope::verify_and_open(e, header, {w.root}, target.transport.secret_key);  // the target
}

// The KPS's check of one signed request, CPU ms each, without and with the chain cache (kps-perf): the
// ratio is what the cache saves of that check. The floor above keeps the uncached check, so its figure
// stays comparable with earlier runs.
std::pair<double, double> device_auth_ms(World& w, const Device& d, double seconds, const std::function<double()>& cpu) {
  const auto h = core::device_auth::sign_request(*d.key, d.chain, "GET", "/v1/notifications", "", kNow, w.rng);
  const auto header = [&](const std::string& n) { auto it = h.find(n); return it == h.end() ? std::string() : it->second; };
  core::device_auth::ChainCache cache;
  double ms[2] = {0, 0};
  for (int cached = 0; cached < 2; ++cached) {
    long n = 0;
    const double t = cpu();
    do {
      core::device_auth::verify_request(header, "GET", "/v1/notifications", "", {w.root}, kNow, 300,
                                        cached ? &cache : nullptr);
      ++n;
    } while (cpu() - t < seconds);
    ms[cached] = 1000.0 * (cpu() - t) / static_cast<double>(n);
  }
  return {ms[0], ms[1]};
}

}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 3.0;
  World w;
  const auto source = w.device("4B4C0001AABBCCDD0011");
  const auto target = w.device("4B4C0001AABBCCDD0022");
  const auto kps_signer = hs::botan_signer(w.kps_key, hs::Algorithm::EcdsaP256Sha256, w.rng);
  // CPU time of this thread, not wall time: on a shared machine the wall clock counts others' work.
  const auto cpu = [] {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  };
  const double start = cpu();
  long n = 0;
  double elapsed = 0, in_round_trips = 0;
  do {
    const double t = cpu();
    for (int i = 0; i < kRequests; ++i) round_trip(w, i % 2 ? target : source, kps_signer);
    in_round_trips += cpu() - t;
    envelope(w, source, target, "6f1d3a2e-0000-4000-8000-000000000001");
    ++n;
    elapsed = cpu() - start;
  } while (elapsed < seconds);
  const double per = 1000.0 / static_cast<double>(n);
  std::printf("floor_transfers %ld\nfloor_ms_per_transfer %.3f\nfloor_transfers_per_s_per_core %.1f\n", n,
              per * elapsed, static_cast<double>(n) / elapsed);
  std::printf("floor_ms_signed_round_trips %.3f (%d: device sign, KPS verify, KPS sign, device verify)\n",
              per * in_round_trips, kRequests);
  std::printf("floor_ms_envelope %.3f (transport chain, seal, sign, KPS and target verify, open)\n",
              per * (elapsed - in_round_trips));
  const auto [uncached, cached] = device_auth_ms(w, source, seconds / 6, cpu);
  std::printf("device_auth_ms_uncached %.3f\ndevice_auth_ms_cached %.3f\ndevice_auth_ratio_cached %.2f\n", uncached,
              cached, cached / uncached);
  return 0;
}
