// A record's third certificate from untrusted bytes (what a station or a public DB could put there):
// a valid [identity, Device CA] record made once, the input appended as the third certificate, then
// core::validate_record, which finds and checks the transport certificate. Only keyline's typed
// errors may escape; anything else (a Botan exception, a crash) is a bug. When the input is this
// device's transport certificate from that CA, the record must validate.
#include <cstdint>
#include <cstdlib>

#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>

#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/record.h"

namespace {

using namespace keyline::core;

struct Fixture {
  Botan::AutoSeeded_RNG rng;
  Botan::EC_Group group{"secp256r1"};
  Botan::ECDSA_PrivateKey root_key{rng, group}, ca_key{rng, group}, device_key{rng, group};
  Botan::X509_Certificate root = make_root_certificate(root_key, "Fuzz Root", "keyline fuzz", rng);
  Botan::X509_Certificate ca = make_ca_certificate(root, root_key, ca_key, "Fuzz Device CA", "keyline fuzz", 0, rng);
  Record record;
  Fixture() {
    record.chip_id = ChipId::parse("4790507200000001A0B1");
    record.imei = Imei::parse("490154203237518");
    record.backup = seal_backup(SecureBytes(32, 0x5A), record.chip_id, SecureBytes{1, 2, 3});
    record.certificates = {issue_identity_certificate_der(ca, ca_key, device_key, record.imei, record.chip_id,
                                                          kDefaultHwType, rng),
                           ca.BER_encode()};
    // The control: a genuine third certificate validates, so the checks below are reached at all.
    Record good = record;
    Botan::Curve25519_PrivateKey x(rng);
    good.certificates.push_back(
        issue_transport_certificate_der(ca, ca_key, x, record.imei, record.chip_id, kDefaultHwType, rng));
    validate_record(good, {root});
  }
};

const Fixture& fixture() {
  static const Fixture f;
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const Fixture& f = fixture();
  Record r = f.record;
  r.certificates.emplace_back(data, data + size);
  try {
    validate_record(r, {f.root});
    const auto t = transport_certificate(r);
    if (t) check_transport_certificate(r, f.ca);
  } catch (const Error&) {
  }
  return 0;
}
