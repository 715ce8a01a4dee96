// STORE DATA refuses a package whose private keys are not the certificates' (issue 12): before the
// fix the device sealed and wrote such a package, answered 9000, and then never booted.
#include <doctest/doctest.h>

#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>

#include "device_test_util.h"
#include "keyline/core/applet_protocol.h"
#include "keyline/core/data_package.h"
#include "keyline/device/applet.h"
#include "keyline/device/log.h"

using namespace keyline;
namespace fs = std::filesystem;
namespace applet = core::applet;

namespace {

core::ResponseApdu run(device::Session& s, const core::CommandApdu& c) {
  return core::transceive([&](const core::SecureBytes& apdu) { return s.process(apdu.data(), apdu.size()); }, c);
}

struct Rig {
  test::ScratchDir tmp{"store-keys"};
  test::DevicePki pki;
  fs::path dir = test::make_test_device(pki, tmp.path());
  std::unique_ptr<device::Device> dev = std::make_unique<device::Device>(device::Chip::load(dir), device::DeviceOptions{});
  device::Session session{*dev};

  core::DataPackage package() { return pki.package_for(dev->chip().chip_id(), "490154203237518"); }

  // SELECT, then the whole package as one extended STORE DATA block; the status word of the block.
  std::uint16_t store(const core::DataPackage& pkg) {
    REQUIRE(run(session, applet::select_command()).sw == core::sw::ok);
    auto c = applet::store_data_command(0, true, pkg.encode());
    c.extended = true;
    return run(session, c).sw;
  }

  // Blank in every way the device can show it: fuse, flash file, STATUS and GET DATA backup.
  void check_blank() {
    CHECK(dev->chip().lifecycle() == device::Lifecycle::Blank);
    CHECK_FALSE(fs::exists(dev->chip().paths().image()));
    const auto st = run(session, applet::status_command());
    REQUIRE(st.sw == core::sw::ok);
    const auto status = applet::parse_status(st.data);
    CHECK_FALSE(status.personalized());
    CHECK(status.flash == applet::FlashState::Empty);
    CHECK(run(session, applet::get_backup_command(true)).sw == core::sw::referenced_data_not_found);
  }
};

}  // namespace

TEST_CASE("STORE DATA with the certificates' own keys personalizes the device (control)") {
  device::set_quiet(true);
  Rig rig;
  CHECK(rig.store(rig.package()) == core::sw::ok);
  CHECK(rig.dev->chip().lifecycle() == device::Lifecycle::Personalized);
  CHECK(fs::exists(rig.dev->chip().paths().image()));
}

TEST_CASE("STORE DATA with an identity key that does not match the identity certificate: 6A80, device stays blank") {
  device::set_quiet(true);
  Rig rig;
  auto pkg = rig.package();
  Botan::AutoSeeded_RNG rng;
  const Botan::ECDSA_PrivateKey other(rng, Botan::EC_Group("secp256r1"));
  pkg.identity_key = Botan::PKCS8::BER_encode(other);
  CHECK(rig.store(pkg) == core::sw::wrong_data);
  rig.check_blank();
  // The device is not spoiled: the right package still goes in afterwards.
  CHECK(rig.store(rig.package()) == core::sw::ok);
}

TEST_CASE("STORE DATA with a transport key that does not match the transport certificate: 6A80, device stays blank") {
  device::set_quiet(true);
  Rig rig;
  auto pkg = rig.package();
  Botan::AutoSeeded_RNG rng;
  const Botan::Curve25519_PrivateKey other(rng);
  pkg.transport_key = other.get_x();
  CHECK(rig.store(pkg) == core::sw::wrong_data);
  rig.check_blank();
}

TEST_CASE("STORE DATA with the two keys swapped between two packages' certificates: 6A80") {
  device::set_quiet(true);
  Rig rig;
  auto pkg = rig.package();
  const auto second = rig.package();
  pkg.identity_key = second.identity_key;  // a valid key of the same device, certified for another package
  CHECK(rig.store(pkg) == core::sw::wrong_data);
  rig.check_blank();
}
