// --key-source device: the chip generates the identity (P-256) and transport (X25519) keys itself
// and answers each public half with a statement signed by its attestation key (docs/channel.md,
// GENERATE KEY). The claim takes only an IMEI; the flow's attest step (flow_channel.cpp) checks the
// statements and fills the public halves; the package carries no private key (version 2).
#include <botan/x509_key.h>

#include "keyline/core/error.h"
#include "keyline/station/errors.h"
#include "keyline/station/key_source.h"
#include "keyline/station/personalize.h"

namespace keyline::station {

namespace {

class DeviceGeneratedKeys final : public KeySource {
 public:
  const char* name() const noexcept override { return "device"; }
  bool keys_in_device() const noexcept override { return true; }

  DeviceKeys claim(JournalDb& db, const ClaimWriter& write) override {
    DeviceKeys keys;  // nothing yet: the chip makes them under this claim
    write([&db](const char* sql, core::pq::Params p) { return db.step(sql, std::move(p)); }, {}, keys);
    return keys;
  }

  // A resumed claim gets new keys from the chip (the attest step): the chip's keys of a session that
  // is gone were never certified, and the station holds nothing to reopen.
  DeviceKeys reopen(const core::ChipId&, const JournalKeys&) override { return {}; }

  std::unique_ptr<Botan::Public_Key> identity_key(const DeviceKeys& keys) const override {
    if (keys.pub.identity.empty())
      throw core::Error(errc::KeyMismatch, "no attested identity key: the attest step did not run");
    return std::unique_ptr<Botan::Public_Key>(Botan::X509::load_key(keys.pub.identity));
  }

  void fill_package(core::DataPackage& package, const DeviceKeys&) const override {
    package.keys_in_device = true;  // version 2: DGIs 8101/8102 are the device's own to add
  }
};

}  // namespace

std::unique_ptr<KeySource> make_device_key_source() { return std::make_unique<DeviceGeneratedKeys>(); }

}  // namespace keyline::station
