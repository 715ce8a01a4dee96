// Chip fab, sealing and opening, the flash image checks and the atomic flash write.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <fstream>

#include "device_test_util.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/error.h"
#include "keyline/device/chip.h"

using namespace keyline;
namespace fs = std::filesystem;

namespace {

core::Bytes image_for(const device::Chip& chip, test::DevicePki& pki, const std::string& imei) {
  const auto pkg = pki.package_for(chip.chip_id(), imei);
  core::FlashImage img;
  img.backup = chip.seal(pkg.encode());
  img.certificates = {pkg.identity_cert, pkg.ca_chain[0]};
  return img.encode();
}

int error_code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const core::Error& e) {
    return e.numeric();
  }
  return 0;
}

}  // namespace

TEST_CASE("make writes ROM, a 0600 chip key and an empty flash") {
  test::ScratchDir tmp("chip");
  test::DevicePki pki;
  const auto dir = test::make_test_device(pki, tmp.path());
  const device::DevicePaths p{dir};
  CHECK(fs::file_size(p.cplc()) == core::kCplcSize);
  CHECK(fs::file_size(p.chip_key()) == 32);
  struct stat st {};
  REQUIRE(::stat(p.chip_key().c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK_FALSE(fs::exists(p.image()));
  const auto chip = device::Chip::load(dir);
  CHECK(chip.lifecycle() == device::Lifecycle::Blank);
  CHECK(chip.cplc().ic_fabricator() == 0x4B4C);
  CHECK(chip.roots().size() == 1);
  // A second make into the same directory must not replace the chip key.
  std::set<std::string> taken;
  CHECK_THROWS_AS(device::make_device(dir, tmp.path() / "root.pem", taken), core::ConfigError);
}

TEST_CASE("a fleet gets unique chip IDs and distinct chip keys") {
  test::ScratchDir tmp("fleet");
  test::DevicePki pki;
  pki.write_root(tmp.path() / "root.pem");
  const auto ids = device::make_fleet(tmp.path() / "fleet", 40, tmp.path() / "root.pem");
  REQUIRE(ids.size() == 40);
  std::set<std::string> seen, keys;
  for (const auto& id : ids) seen.insert(id.str());
  CHECK(seen.size() == 40);
  const auto dirs = device::list_fleet(tmp.path() / "fleet");
  REQUIRE(dirs.size() == 40);
  CHECK(dirs.front().filename() == "dev-0000");
  for (const auto& d : dirs) keys.insert(test::read_file_bytes_hex(device::DevicePaths{d}.chip_key()));
  CHECK(keys.size() == 40);
}

TEST_CASE("a missing or broken device directory is a typed error") {
  test::ScratchDir tmp("nodev");
  CHECK(error_code_of([&] { device::Chip::load(tmp.path() / "nothing"); }) == 2001);
  test::DevicePki pki;
  const auto dir = test::make_test_device(pki, tmp.path());
  fs::resize_file(device::DevicePaths{dir}.chip_key(), 16);
  CHECK(error_code_of([&] { device::Chip::load(dir); }) == 2001);
}

TEST_CASE("sealed backup opens on its chip only, and not after any one-bit change") {
  test::ScratchDir tmp("seal");
  test::DevicePki pki;
  const auto a = device::Chip::load(test::make_test_device(pki, tmp.path(), "a"));
  const auto b = device::Chip::load(test::make_test_device(pki, tmp.path(), "b"));
  const core::SecureBytes plain = pki.package_for(a.chip_id(), "490154203237518").encode();
  const auto sealed = a.seal(plain);
  CHECK(a.open(sealed) == plain);
  CHECK(core::parse_backup_header(sealed).chip_id == a.chip_id());
  CHECK_THROWS_AS(b.open(sealed), core::Error);
  for (std::size_t i = 0; i < sealed.size(); i += 7) {
    auto bad = sealed;
    bad[i] ^= static_cast<std::uint8_t>(1u << (i % 8));
    CHECK_THROWS_AS(a.open(bad), core::Error);
  }
  // Two seals of the same package differ (fresh nonce), both open.
  const auto again = a.seal(plain);
  CHECK(again != sealed);
  CHECK(a.open(again) == plain);
}

TEST_CASE("verify_image accepts the chip's own image and names what is wrong with others") {
  test::ScratchDir tmp("image");
  test::DevicePki pki;
  const auto a = device::Chip::load(test::make_test_device(pki, tmp.path(), "a"));
  const auto b = device::Chip::load(test::make_test_device(pki, tmp.path(), "b"));
  const auto image = image_for(a, pki, "260531793113837");
  const auto id = a.verify_image(image);
  CHECK(id.imei.str() == "260531793113837");
  CHECK(id.chip_id == a.chip_id());
  CHECK(id.identity_fingerprint.size() == 64);
  CHECK(id.transport_fingerprint.size() == 64);
  CHECK(id.package_digest.size() == 32);

  CHECK(error_code_of([&] { b.verify_image(image); }) == 2004);  // another chip's image
  auto flipped = image;
  flipped[20] ^= 0x80;
  CHECK(error_code_of([&] { a.verify_image(flipped); }) == 2004);
  CHECK(error_code_of([&] { a.verify_image(core::Bytes{'K', 'L', 'F', 'L'}); }) == 2004);

  // Sealed by the right chip, but the identity chains to another manufacturer's root.
  const auto rogue = pki.package_from_rogue_ca(a.chip_id(), "260531793113837");
  core::FlashImage img;
  img.backup = a.seal(rogue.encode());
  img.certificates = {rogue.identity_cert, rogue.ca_chain[0]};
  CHECK(error_code_of([&] { a.verify_image(img.encode()); }) == 2004);

  // Certificate issued for chip b, sealed by chip a.
  const auto wrong_chip = pki.package_for(b.chip_id(), "260531793113837");
  img.backup = a.seal(wrong_chip.encode());
  img.certificates = {wrong_chip.identity_cert, wrong_chip.ca_chain[0]};
  CHECK(error_code_of([&] { a.verify_image(img.encode()); }) == 2004);
}

TEST_CASE("a Device CA verified once: every later leaf is still checked against it") {
  test::ScratchDir tmp("knownca");
  test::DevicePki pki;
  const auto a = device::Chip::load(test::make_test_device(pki, tmp.path(), "a"));
  const auto b = device::Chip::load(test::make_test_device(pki, tmp.path(), "b"));
  const auto imei = core::Imei::parse("260531793113837");
  const auto good_a = pki.package_for(a.chip_id(), imei.str());
  const auto good_b = pki.package_for(b.chip_id(), imei.str());
  // The first check verifies the Device CA against the root; the second chip's check reuses that.
  CHECK_NOTHROW(a.check_identity(good_a.identity_cert, good_a.ca_chain, imei));
  CHECK_NOTHROW(b.check_identity(good_b.identity_cert, good_b.ca_chain, imei));
  CHECK_NOTHROW(a.check_identity(good_a.identity_cert, good_a.ca_chain, imei));

  // Same issuer name, other key: a leaf from a look-alike CA presented with the genuine CA certificate.
  const auto rogue = pki.package_from_rogue_ca(a.chip_id(), imei.str());
  CHECK(error_code_of([&] { a.check_identity(rogue.identity_cert, good_a.ca_chain, imei); }) == 2004);
  CHECK(error_code_of([&] { a.check_identity(rogue.identity_cert, rogue.ca_chain, imei); }) == 2004);
  // A genuine leaf with the look-alike CA in the chain, and with no chain at all.
  CHECK(error_code_of([&] { a.check_identity(good_a.identity_cert, rogue.ca_chain, imei); }) == 2004);
  CHECK(error_code_of([&] { a.check_identity(good_a.identity_cert, {}, imei); }) == 2004);
  // The shortcut never skips the chip and IMEI checks.
  CHECK(error_code_of([&] { b.check_identity(good_a.identity_cert, good_a.ca_chain, imei); }) == 2004);
  CHECK(error_code_of([&] {
          a.check_identity(good_a.identity_cert, good_a.ca_chain, core::Imei::parse("490154203237518"));
        }) == 2004);
}

TEST_CASE("a personalized chip refuses an image with another IMEI") {
  test::ScratchDir tmp("imei");
  test::DevicePki pki;
  const auto dir = test::make_test_device(pki, tmp.path());
  auto chip = device::Chip::load(dir);
  chip.set_personalized(core::Imei::parse("490154203237518"));
  CHECK(device::Chip::load(dir).imei()->str() == "490154203237518");
  CHECK_NOTHROW(chip.verify_image(image_for(chip, pki, "490154203237518")));
  CHECK(error_code_of([&] { chip.verify_image(image_for(chip, pki, "357805023984942")); }) == 2004);
}

TEST_CASE("the lifecycle fuse burns in place, and every state a crash can leave loads") {
  test::ScratchDir tmp("fuse");
  test::DevicePki pki;
  const auto dir = test::make_test_device(pki, tmp.path());
  const auto otp = device::DevicePaths{dir}.otp();
  auto write_otp = [&](const std::string& bytes) {
    std::ofstream(otp, std::ios::binary | std::ios::trunc) << bytes;
  };
  auto inode_of = [](const fs::path& p) {
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_ino;
  };
  const std::string imei = "490154203237518";

  const auto ino = inode_of(otp);
  auto chip = device::Chip::load(dir);
  chip.set_personalized(core::Imei::parse(imei));
  CHECK(inode_of(otp) == ino);  // burnt, not replaced
  const std::string burnt = "KLOT\x0F" + imei;
  CHECK(*device::read_bytes(otp) == core::Bytes(burnt.begin(), burnt.end()));
  CHECK(device::Chip::load(dir).imei()->str() == imei);

  // A crash inside the burn: the IMEI (or zeros) behind a BLANK state byte is still BLANK...
  for (const std::string& torn : {std::string("KLOT\x01") + imei, std::string("KLOT\x01") + std::string(15, '\0')}) {
    write_otp(torn);
    auto c = device::Chip::load(dir);
    CHECK(c.lifecycle() == device::Lifecycle::Blank);
    CHECK_FALSE(c.imei());
    // ... and burns again in place.
    const auto torn_ino = inode_of(otp);
    c.set_personalized(core::Imei::parse("357805023984942"));
    CHECK(inode_of(otp) == torn_ino);
    CHECK(device::Chip::load(dir).imei()->str() == "357805023984942");
  }
  // ... and with the image already in flash, the next start burns the fuse from the image.
  write_otp(std::string("KLOT\x01") + imei);
  const auto image = image_for(chip, pki, imei);
  device::write_atomic(chip.paths().image(), image.data(), image.size());
  CHECK(device::Chip::load(dir).lifecycle() == device::Lifecycle::Personalized);
  CHECK(device::Chip::load(dir).imei()->str() == imei);

  // A fuse that is not a well-formed BLANK one (missing here) is written whole.
  fs::remove(otp);
  fs::remove(chip.paths().image());
  auto blank = device::Chip::load(dir);
  CHECK(blank.lifecycle() == device::Lifecycle::Blank);
  blank.set_personalized(core::Imei::parse(imei));
  CHECK(device::Chip::load(dir).imei()->str() == imei);
}

TEST_CASE("atomic write: a power cut at any byte leaves the old file whole") {
  test::ScratchDir tmp("atomic");
  const auto path = tmp.path() / "image.bin";
  const core::Bytes old_bytes(300, 0xAA), new_bytes(500, 0x55);
  device::write_atomic(path, old_bytes.data(), old_bytes.size());
  for (std::size_t cut : {std::size_t(0), std::size_t(1), std::size_t(250), std::size_t(499), std::size_t(500)}) {
    CHECK(error_code_of([&] { device::write_atomic(path, new_bytes.data(), new_bytes.size(), cut); }) == 2003);
    CHECK(*device::read_bytes(path) == old_bytes);
  }
  device::write_atomic(path, new_bytes.data(), new_bytes.size());
  CHECK(*device::read_bytes(path) == new_bytes);
}

TEST_CASE("offline boot, status, wipe and corrupt") {
  test::ScratchDir tmp("offline");
  test::DevicePki pki;
  const auto dir = test::make_test_device(pki, tmp.path());
  CHECK(error_code_of([&] { device::boot_offline(dir); }) == 2002);
  auto chip = device::Chip::load(dir);
  const auto image = image_for(chip, pki, "357805023984942");
  device::write_atomic(chip.paths().image(), image.data(), image.size());
  chip.set_personalized(core::Imei::parse("357805023984942"));
  const auto id = device::boot_offline(dir);
  CHECK(id.imei.str() == "357805023984942");
  CHECK(device::status_text(dir).find("flash ok") != std::string::npos);
  device::corrupt_flash(dir);
  CHECK(error_code_of([&] { device::boot_offline(dir); }) == 2004);
  CHECK(device::status_text(dir).find("flash bad") != std::string::npos);
  device::wipe_flash(dir);
  CHECK(error_code_of([&] { device::boot_offline(dir); }) == 2002);
  CHECK(device::status_text(dir).find("PERSONALIZED") != std::string::npos);
}
