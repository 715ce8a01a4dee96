// Every status word path of the applet, driven through Session without sockets.
#include <doctest/doctest.h>


#include <cstdio>

#include "device_test_util.h"
#include "keyline/core/apdu.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/data_package.h"
#include "keyline/device/applet.h"

using namespace keyline;
namespace fs = std::filesystem;

namespace {

core::CommandApdu cmd(std::uint8_t cla, std::uint8_t ins, std::uint8_t p1, std::uint8_t p2,
                      const core::SecureBytes& data = {}, std::optional<std::uint32_t> le = std::nullopt) {
  core::CommandApdu c;
  c.cla = cla;
  c.ins = ins;
  c.p1 = p1;
  c.p2 = p2;
  c.data = data;
  c.le = le;
  return c;
}

core::CommandApdu select_applet() {
  return cmd(0x00, 0xA4, 0x04, 0x00, core::SecureBytes(std::begin(device::kAid), std::end(device::kAid)));
}

// Collects 61XX pieces like a station would.
core::ResponseApdu run(device::Session& s, const core::CommandApdu& c) {
  return core::transceive([&](const core::SecureBytes& apdu) { return s.process(apdu.data(), apdu.size()); }, c);
}

// Sends the package as STORE DATA blocks of `block` bytes; returns the last status word.
std::uint16_t store(device::Session& s, const core::SecureBytes& pkg, std::size_t block) {
  std::uint8_t n = 0;
  for (std::size_t off = 0; off < pkg.size(); off += block, ++n) {
    const std::size_t len = std::min(block, pkg.size() - off);
    const bool last = off + len == pkg.size();
    auto c = cmd(0x80, 0xE2, static_cast<std::uint8_t>(last ? 0x88 : 0x08), n,
                 core::SecureBytes(pkg.begin() + off, pkg.begin() + off + len));
    c.extended = len > 255;
    const auto r = run(s, c);
    if (r.sw != core::sw::ok || last) return r.sw;
  }
  return 0;
}

// One chained (CLA bit 10) or plain part of 65528 bytes, sent raw: Session::process as the server calls it.
core::ResponseApdu send_part(device::Session& s, std::uint8_t cla, std::uint8_t ins, std::uint8_t p1, std::uint8_t p2) {
  auto c = cmd(cla, ins, p1, p2, core::SecureBytes(65528, 0x5A));
  c.extended = true;
  const auto apdu = core::encode_command(c);
  return core::decode_response(s.process(apdu.data(), apdu.size()));
}

struct Rig {
  test::ScratchDir tmp{"applet"};
  test::DevicePki pki;
  fs::path dir = test::make_test_device(pki, tmp.path());
  std::unique_ptr<device::Device> dev;
  explicit Rig(device::DeviceOptions o = {}) { dev = std::make_unique<device::Device>(device::Chip::load(dir), o); }
  core::DataPackage package(const std::string& imei = "490154203237518") {
    return pki.package_for(dev->chip().chip_id(), imei);
  }
};

}  // namespace

TEST_CASE("probes and unknown commands answer quickly with the right status word") {
  Rig rig;
  device::Session s(*rig.dev);
  CHECK(run(s, cmd(0x00, 0x84, 0x00, 0x00, {}, 8)).sw == core::sw::ins_not_supported);  // GET CHALLENGE
  CHECK(run(s, cmd(0xA0, 0xA4, 0x00, 0x00)).sw == core::sw::cla_not_supported);
  CHECK(run(s, cmd(0x80, 0xA4, 0x04, 0x00, {0x01})).sw == core::sw::cla_not_supported);
  CHECK(run(s, cmd(0x00, 0xA4, 0x00, 0x00, {0x3F, 0x00})).sw == core::sw::file_not_found);
  CHECK(run(s, cmd(0x00, 0xA4, 0x04, 0x00, {0xA0, 0x00, 0x00, 0x00, 0x03})).sw == core::sw::file_not_found);
  CHECK(run(s, cmd(0x80, 0xCA, 0x00, 0x66, {}, 256)).sw == core::sw::referenced_data_not_found);
  CHECK(run(s, cmd(0x00, 0xC0, 0x00, 0x00, {}, 16)).sw == core::sw::conditions_not_satisfied);
  CHECK(run(s, cmd(0x80, 0xC4, 0x01, 0x00, {}, 256)).sw == core::sw::incorrect_p1p2);
  // Malformed bytes: too short, Lc disagreeing with the data.
  const std::uint8_t short_apdu[] = {0x00, 0xA4};
  CHECK(core::decode_response(s.process(short_apdu, sizeof short_apdu)).sw == core::sw::wrong_length);
  const std::uint8_t bad_lc[] = {0x00, 0xA4, 0x04, 0x00, 0x08, 0xF0};
  CHECK(core::decode_response(s.process(bad_lc, sizeof bad_lc)).sw == core::sw::wrong_length);
}

TEST_CASE("GET DATA CPLC works without selection, with CLA 00 and 80") {
  Rig rig;
  device::Session s(*rig.dev);
  for (std::uint8_t cla : {std::uint8_t(0x80), std::uint8_t(0x00)}) {
    const auto r = run(s, cmd(cla, 0xCA, 0x9F, 0x7F, {}, 256));
    REQUIRE(r.sw == core::sw::ok);
    const auto cplc = core::Cplc::parse(r.data.data(), r.data.size());
    CHECK(cplc.chip_id() == rig.dev->chip().chip_id());
  }
}

TEST_CASE("personalization: multi-block STORE DATA, backup, drill, and the 6985 on a second store") {
  Rig rig;
  device::Session s(*rig.dev);
  const auto pkg = rig.package();
  const core::SecureBytes encoded = pkg.encode();

  CHECK(store(s, encoded, 200) == core::sw::conditions_not_satisfied);  // not selected
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  CHECK(run(s, cmd(0x80, 0xCA, 0xDF, 0x20, {}, 256)).sw == core::sw::referenced_data_not_found);
  CHECK(run(s, cmd(0x80, 0xC6, 0x00, 0x00, {}, 256)).sw == core::sw::referenced_data_not_found);
  REQUIRE(store(s, encoded, 200) == core::sw::ok);
  CHECK(rig.dev->chip().lifecycle() == device::Lifecycle::Personalized);
  CHECK(rig.dev->chip().imei()->str() == "490154203237518");

  const auto backup = run(s, cmd(0x80, 0xCA, 0xDF, 0x20, {}, 256));
  REQUIRE(backup.sw == core::sw::ok);
  CHECK(backup.data.size() > 256);  // came back through 61XX / GET RESPONSE
  CHECK(core::parse_backup_header(backup.data.data(), backup.data.size()).chip_id == rig.dev->chip().chip_id());

  const auto drill = run(s, cmd(0x80, 0xC6, 0x00, 0x00, {}, 256));
  REQUIRE(drill.sw == core::sw::ok);
  CHECK(core::Bytes(drill.data.begin(), drill.data.end()) == core::package_digest(encoded));
  // The drill also opens a backup handed to it, and refuses one changed by a bit.
  auto given = backup.data;
  CHECK(run(s, cmd(0x80, 0xC6, 0x00, 0x00, given, 256)).data == drill.data);
  given[given.size() - 1] ^= 0x01;
  CHECK(run(s, cmd(0x80, 0xC6, 0x00, 0x00, given, 256)).sw == core::sw::wrong_data);

  const auto st = run(s, cmd(0x80, 0xC4, 0x00, 0x00, {}, 256));
  REQUIRE(st.sw == core::sw::ok);
  REQUIRE(st.data.size() == 1 + 10 + 1 + 15);
  CHECK(st.data[0] == 0x0F);
  CHECK(st.data[11] == 0x01);

  // Second personalization refused before anything is gathered; the flash is unchanged.
  const auto before = *device::read_bytes(rig.dev->chip().paths().image());
  CHECK(store(s, rig.package("357805023984942").encode(), 200) == core::sw::conditions_not_satisfied);
  CHECK(*device::read_bytes(rig.dev->chip().paths().image()) == before);
  // Reset needs --allow-reset.
  CHECK(run(s, cmd(0x80, 0xC8, 0x00, 0x00)).sw == core::sw::security_not_satisfied);
}

TEST_CASE("the flash kept in memory never hides a change made to the file behind the device") {
  Rig rig;
  device::Session s(*rig.dev);
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  const core::SecureBytes encoded = rig.package().encode();
  REQUIRE(store(s, encoded, encoded.size()) == core::sw::ok);
  const auto backup = run(s, cmd(0x80, 0xCA, 0xDF, 0x20, {}, 256));
  REQUIRE(backup.sw == core::sw::ok);
  const auto path = rig.dev->chip().paths().image();
  const auto good = *device::read_bytes(path);

  // corrupt-flash replaces the file with one bit flipped in the backup: the device reads the new file.
  device::corrupt_flash(rig.dir);
  const auto after = run(s, cmd(0x80, 0xCA, 0xDF, 0x20, {}, 256));
  REQUIRE(after.sw == core::sw::ok);
  CHECK(after.data != backup.data);
  CHECK(after.data.size() == backup.data.size());
  CHECK(run(s, cmd(0x80, 0xC6, 0x00, 0x00, {}, 256)).sw == core::sw::wrong_data);
  CHECK(run(s, cmd(0x80, 0xC4, 0x00, 0x00, {}, 256)).data[11] == 0x02);  // flash present but bad

  // The same size written in place, inode kept: seen as well.
  auto bytes = good;
  {
    bytes[bytes.size() / 3] ^= 0x40;
    std::FILE* f = std::fopen(path.c_str(), "r+b");
    REQUIRE(f);
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
  CHECK(run(s, cmd(0x80, 0xC4, 0x00, 0x00, {}, 256)).data[11] == 0x02);
  device::write_atomic(path, good.data(), good.size());
  CHECK(run(s, cmd(0x80, 0xCA, 0xDF, 0x20, {}, 256)).data == backup.data);
  CHECK(run(s, cmd(0x80, 0xC4, 0x00, 0x00, {}, 256)).data[11] == 0x01);

  // wipe-flash: the flash is empty for the device too.
  device::wipe_flash(rig.dir);
  CHECK(run(s, cmd(0x80, 0xCA, 0xDF, 0x20, {}, 256)).sw == core::sw::referenced_data_not_found);
  CHECK(run(s, cmd(0x80, 0xC6, 0x00, 0x00, {}, 256)).sw == core::sw::referenced_data_not_found);
}

TEST_CASE("STORE DATA checks P1, the block counter and the package") {
  Rig rig;
  device::Session s(*rig.dev);
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  const auto encoded = rig.package().encode();
  const core::SecureBytes part(encoded.begin(), encoded.begin() + 100);
  CHECK(run(s, cmd(0x80, 0xE2, 0x00, 0x00, part)).sw == core::sw::incorrect_p1p2);  // not DGI format
  CHECK(run(s, cmd(0x80, 0xE2, 0x28, 0x00, part)).sw == core::sw::incorrect_p1p2);  // encrypted
  CHECK(run(s, cmd(0x80, 0xE2, 0x08, 0x00, part)).sw == core::sw::ok);
  CHECK(run(s, cmd(0x80, 0xE2, 0x08, 0x02, part)).sw == core::sw::incorrect_p1p2);  // skipped block 1
  CHECK(run(s, cmd(0x80, 0xE2, 0x08, 0x01, part)).sw == core::sw::incorrect_p1p2);  // gathering restarted
  CHECK(run(s, cmd(0x80, 0xE2, 0x88, 0x00, part)).sw == core::sw::wrong_data);      // truncated package
  CHECK(run(s, cmd(0x80, 0xE2, 0x88, 0x00, {0x01, 0x01, 0x00})).sw == core::sw::wrong_data);
  CHECK(run(s, cmd(0x00, 0xE2, 0x88, 0x00, part)).sw == core::sw::cla_not_supported);
  // A valid package for another chip, or from another manufacturer, is refused.
  test::ScratchDir other_tmp("other");
  const auto other = device::Chip::load(test::make_test_device(rig.pki, other_tmp.path()));
  CHECK(store(s, rig.pki.package_for(other.chip_id(), "490154203237518").encode(), 1000) == core::sw::wrong_data);
  CHECK(store(s, rig.pki.package_from_rogue_ca(rig.dev->chip().chip_id(), "490154203237518").encode(), 1000) ==
        core::sw::wrong_data);
  CHECK(rig.dev->chip().lifecycle() == device::Lifecycle::Blank);
  CHECK_FALSE(fs::exists(rig.dev->chip().paths().image()));
  // One extended block works too.
  CHECK(store(s, encoded, encoded.size()) == core::sw::ok);
}

TEST_CASE("recovery path: UPDATE BINARY into staging, boot verifies before it replaces the flash") {
  Rig rig;
  device::Session s(*rig.dev);
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  // Boot needs a personalized device.
  CHECK(run(s, cmd(0x80, 0xC2, 0x00, 0x00, {}, 256)).sw == core::sw::conditions_not_satisfied);
  REQUIRE(store(s, rig.package().encode(), 400) == core::sw::ok);
  const auto paths = rig.dev->chip().paths();
  const auto good = *device::read_bytes(paths.image());
  CHECK(run(s, cmd(0x80, 0xC2, 0x00, 0x00, {}, 256)).sw == core::sw::referenced_data_not_found);

  auto write_staging = [&](const core::Bytes& image) {
    for (std::size_t off = 0; off < image.size(); off += 200) {
      const std::size_t len = std::min<std::size_t>(200, image.size() - off);
      const auto r = run(s, cmd(0x00, 0xD6, static_cast<std::uint8_t>(off >> 8), static_cast<std::uint8_t>(off),
                                core::SecureBytes(image.begin() + off, image.begin() + off + len)));
      REQUIRE(r.sw == core::sw::ok);
    }
  };
  CHECK(run(s, cmd(0x00, 0xD6, 0x80, 0x00, {0x01})).sw == core::sw::incorrect_p1p2);
  CHECK(run(s, cmd(0x00, 0xD6, 0x7F, 0x00, {0x01})).sw == device::kSwOffsetOutside);

  // A bad image changes nothing.
  auto bad = good;
  bad[40] ^= 0x04;
  write_staging(bad);
  CHECK(run(s, cmd(0x80, 0xC2, 0x00, 0x00, {}, 256)).sw == core::sw::wrong_data);
  CHECK(*device::read_bytes(paths.image()) == good);

  // Flash lost, the good image restores it and the same identity comes back.
  fs::remove(paths.image());
  write_staging(good);
  const auto r = run(s, cmd(0x80, 0xC2, 0x00, 0x00, {}, 256));
  REQUIRE(r.sw == core::sw::ok);
  CHECK(std::string(r.data.begin(), r.data.begin() + 15) == "490154203237518");
  CHECK(r.data.size() == 15 + 32 + 32);
  CHECK(*device::read_bytes(paths.image()) == good);
  CHECK_FALSE(fs::exists(paths.staging()));
}

TEST_CASE("reset to blank when allowed, then a new personalization is accepted") {
  device::DeviceOptions o;
  o.allow_reset = true;
  Rig rig(o);
  device::Session s(*rig.dev);
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  REQUIRE(store(s, rig.package().encode(), 255) == core::sw::ok);
  CHECK(run(s, cmd(0x80, 0xC8, 0x00, 0x00)).sw == core::sw::ok);
  CHECK(rig.dev->chip().lifecycle() == device::Lifecycle::Blank);
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  CHECK(store(s, rig.package("357805023984942").encode(), 255) == core::sw::ok);
  CHECK(rig.dev->chip().imei()->str() == "357805023984942");
}

TEST_CASE("fault injection: power cut during the flash write, fail rate") {
  device::DeviceOptions o;
  o.faults.power_cut_at_byte = 100;
  Rig rig(o);
  device::Session s(*rig.dev);
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  int code = 0;
  try {
    store(s, rig.package().encode(), 255);
  } catch (const core::Error& e) {
    code = e.numeric();
  }
  CHECK(code == 2003);
  CHECK(rig.dev->powered_off());
  rig.dev->power_restored();
  CHECK_FALSE(fs::exists(rig.dev->chip().paths().image()));
  CHECK(device::Chip::load(rig.dir).lifecycle() == device::Lifecycle::Blank);
  // After the power comes back the same package goes in (the cut was one-shot).
  device::Session s2(*rig.dev);
  REQUIRE(run(s2, select_applet()).sw == core::sw::ok);
  CHECK(store(s2, rig.package().encode(), 255) == core::sw::ok);

  device::DeviceOptions f;
  f.faults.fail_rate = 1.0;
  Rig failing(f);
  device::Session s3(*failing.dev);
  CHECK(run(s3, select_applet()).sw == core::sw::unknown_error);
}

TEST_CASE("UPDATE BINARY writes each command's bytes once: a 57 KB image costs about twice its size") {
  Rig rig;
  device::Session s(*rig.dev);
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  auto pkg = rig.package();
  pkg.app_items = {{0x0F01, core::Bytes(55000, 0x42)}};
  REQUIRE(store(s, pkg.encode(), 4000) == core::sw::ok);
  const auto paths = rig.dev->chip().paths();
  const auto good = *device::read_bytes(paths.image());
  REQUIRE(good.size() > 56000);
  const auto identity = device::boot_offline(rig.dir);
  fs::remove(paths.image());  // flash lost

  // 200-byte commands as far as the 15-bit offset reaches; the rest in one command (chained).
  const auto before = device::storage_counters();
  std::size_t commands = 0;
  for (std::size_t off = 0; off < good.size(); ++commands) {
    const std::size_t len = off + 200 <= 0x7FFF ? std::min<std::size_t>(200, good.size() - off) : good.size() - off;
    const auto r = run(s, cmd(0x00, 0xD6, static_cast<std::uint8_t>(off >> 8), static_cast<std::uint8_t>(off),
                              core::SecureBytes(good.begin() + off, good.begin() + off + len)));
    REQUIRE(r.sw == core::sw::ok);
    off += len;
  }
  REQUIRE(commands > 150);
  const auto staged = device::storage_counters();
  CHECK(staged.bytes_written - before.bytes_written == good.size());  // each byte once
  CHECK(staged.syncs == before.syncs);                                // nothing synced while staging

  const auto r = run(s, cmd(0x80, 0xC2, 0x00, 0x00, {}, 256));
  REQUIRE(r.sw == core::sw::ok);
  const auto after = device::storage_counters();
  // Staging once plus the atomic flash write once, with one file and one directory sync.
  CHECK(after.bytes_written - before.bytes_written <= 2 * good.size() + 1024);
  CHECK(after.syncs - before.syncs <= 2);
  CHECK(*device::read_bytes(paths.image()) == good);
  CHECK_FALSE(fs::exists(paths.staging()));
  const auto booted = device::boot_offline(rig.dir);
  CHECK(booted.identity_fingerprint == identity.identity_fingerprint);
  CHECK(booted.package_digest == identity.package_digest);

  // Rewriting one byte again and again costs one byte each, not the whole staging file.
  REQUIRE(run(s, cmd(0x00, 0xD6, 0x00, 0x00, core::SecureBytes(good.begin(), good.begin() + 30000))).sw ==
          core::sw::ok);
  const auto rewrite0 = device::storage_counters();
  for (int i = 0; i < 300; ++i) REQUIRE(run(s, cmd(0x00, 0xD6, 0x00, 0x01, {0x00})).sw == core::sw::ok);
  CHECK(device::storage_counters().bytes_written - rewrite0.bytes_written == 300);
  CHECK(device::storage_counters().syncs == rewrite0.syncs);
  CHECK(fs::file_size(paths.staging()) == 30000);
}

TEST_CASE("staging written in place: a torn or stale staging file never reaches the flash") {
  Rig rig;
  device::Session s(*rig.dev);
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  REQUIRE(store(s, rig.package().encode(), 400) == core::sw::ok);
  const auto paths = rig.dev->chip().paths();
  const auto good = *device::read_bytes(paths.image());
  auto stage = [&](const core::Bytes& image) {
    for (std::size_t off = 0; off < image.size(); off += 200) {
      const std::size_t len = std::min<std::size_t>(200, image.size() - off);
      REQUIRE(run(s, cmd(0x00, 0xD6, static_cast<std::uint8_t>(off >> 8), static_cast<std::uint8_t>(off),
                         core::SecureBytes(image.begin() + off, image.begin() + off + len)))
                  .sw == core::sw::ok);
    }
  };
  // A crash before all staged bytes reached the disk: the file is short. Boot refuses it, the flash stays.
  stage(good);
  fs::resize_file(paths.staging(), good.size() / 2);
  CHECK(run(s, cmd(0x80, 0xC2, 0x00, 0x00, {}, 256)).sw == core::sw::wrong_data);
  CHECK(*device::read_bytes(paths.image()) == good);
  CHECK(device::Chip::load(rig.dir).lifecycle() == device::Lifecycle::Personalized);
  // A new image from offset 0 drops the longer old one behind it (no stale tail).
  core::Bytes longer = good;
  longer.resize(good.size() + 500, 0xEE);
  stage(longer);
  stage(good);
  CHECK(fs::file_size(paths.staging()) == good.size());
  CHECK(run(s, cmd(0x80, 0xC2, 0x00, 0x00, {}, 256)).sw == core::sw::ok);
  // Continuing without a staging file, or past its end, is refused and creates nothing.
  CHECK(run(s, cmd(0x00, 0xD6, 0x00, 0x10, {0x01})).sw == device::kSwOffsetOutside);
  CHECK_FALSE(fs::exists(paths.staging()));
  REQUIRE(run(s, cmd(0x00, 0xD6, 0x00, 0x00, {0x01, 0x02})).sw == core::sw::ok);
  CHECK(run(s, cmd(0x00, 0xD6, 0x00, 0x03, {0x01})).sw == device::kSwOffsetOutside);
  CHECK(run(s, cmd(0x00, 0xD6, 0x00, 0x02, {0x03})).sw == core::sw::ok);
  CHECK(fs::file_size(paths.staging()) == 3);
}

TEST_CASE("chained command data before SELECT of the applet is refused and nothing of it is kept") {
  Rig rig;
  device::Session s(*rig.dev);
  const std::size_t base = test::heap_in_use();
  // The attack: chained 90 E2 blocks with no SELECT. Each is refused, none is gathered.
  for (int i = 0; i < 16; ++i) CHECK(send_part(s, 0x90, 0xE2, 0x00, 0x00).sw == core::sw::conditions_not_satisfied);
  CHECK(s.held_bytes() == 0);
  CHECK(test::heap_in_use() < base + 64 * 1024);
  CHECK(send_part(s, 0x10, 0xD6, 0x00, 0x00).sw == core::sw::conditions_not_satisfied);  // UPDATE BINARY
  CHECK(send_part(s, 0x10, 0x84, 0x00, 0x00).sw == core::sw::ins_not_supported);         // not an applet INS
  CHECK(s.held_bytes() == 0);
  // Another AID selected is no selection either.
  CHECK(run(s, cmd(0x00, 0xA4, 0x04, 0x00, {0xA0, 0x00, 0x00, 0x00, 0x03})).sw == core::sw::file_not_found);
  CHECK(send_part(s, 0x90, 0xE2, 0x00, 0x00).sw == core::sw::conditions_not_satisfied);
  // Selected, the same part is gathered (the refusal above is not a refusal of every chained part).
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  CHECK(send_part(s, 0x90, 0xE2, 0x00, 0x00).sw == core::sw::ok);
  CHECK(s.held_bytes() >= 65528);
  CHECK(send_part(s, 0x10, 0x84, 0x00, 0x00).sw == core::sw::ins_not_supported);
  CHECK(s.held_bytes() == 0);
}

TEST_CASE("held_bytes counts the allocations a session keeps, and every way out gives them back") {
  Rig rig;
  device::Session s(*rig.dev);
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  const std::size_t base = test::heap_in_use();

  // Three chained parts: the vector has grown to room for four. The budget must see the room.
  for (int i = 0; i < 3; ++i) REQUIRE(send_part(s, 0x90, 0xE2, 0x00, 0x00).sw == core::sw::ok);
  const std::size_t grown = test::heap_in_use() - base;
  REQUIRE(grown >= 3 * 65528);
  CHECK(s.held_bytes() + 16 * 1024 >= grown);

  // Each path that ends the chain or the gathering must free the memory, not only zero the count.
  const auto released = [&](const char* path) {
    INFO(path);
    CHECK(s.held_bytes() == 0);
    CHECK(test::heap_in_use() < base + 64 * 1024);
  };
  // The reported attack: 16 chained 90 E2 blocks, then a STATUS (another INS ends the chain).
  for (int i = 3; i < 16; ++i) REQUIRE(send_part(s, 0x90, 0xE2, 0x00, 0x00).sw == core::sw::ok);
  REQUIRE(test::heap_in_use() >= base + 16 * 65528);
  CHECK(run(s, cmd(0x80, 0xC4, 0x00, 0x00, {}, 256)).sw == core::sw::conditions_not_satisfied);
  released("chain ended by another command");

  // A chain over 1 MiB: 6700.
  std::uint16_t sw = core::sw::ok;
  for (int i = 0; i < 17 && sw == core::sw::ok; ++i) sw = send_part(s, 0x90, 0xE2, 0x00, 0x00).sw;
  CHECK(sw == core::sw::wrong_length);
  released("chain over the limit");

  // A chained part of another applet INS restarts the chain: the first one's room goes.
  for (int i = 0; i < 8; ++i) REQUIRE(send_part(s, 0x90, 0xE2, 0x00, 0x00).sw == core::sw::ok);
  REQUIRE(send_part(s, 0x10, 0xD6, 0x00, 0x00).sw == core::sw::ok);
  CHECK(s.held_bytes() < 2 * 65528 + 1024);
  CHECK(test::heap_in_use() < base + 2 * 65528 + 64 * 1024);
  s.reset();  // vpcd power off / reset
  released("power off");
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);

  // STORE DATA blocks (not chained), ended by a block out of sequence, by a bad P1, by SELECT.
  const auto blocks = [&](int n) {
    for (int i = 0; i < n; ++i) REQUIRE(send_part(s, 0x80, 0xE2, 0x08, static_cast<std::uint8_t>(i)).sw == core::sw::ok);
    REQUIRE(test::heap_in_use() >= base + static_cast<std::size_t>(n) * 65528);
  };
  blocks(15);
  CHECK(send_part(s, 0x80, 0xE2, 0x08, 0x20).sw == core::sw::incorrect_p1p2);
  released("STORE DATA block out of sequence");
  blocks(15);
  CHECK(send_part(s, 0x80, 0xE2, 0x48, 0x0F).sw == core::sw::incorrect_p1p2);
  released("STORE DATA with a bad P1");
  blocks(15);
  CHECK(send_part(s, 0x80, 0xE2, 0x08, 0x0F).sw == core::sw::ok);
  CHECK(send_part(s, 0x80, 0xE2, 0x08, 0x10).sw == core::sw::wrong_length);  // past 1 MiB
  released("STORE DATA over the limit");
  blocks(15);
  CHECK(send_part(s, 0x80, 0xE2, 0x88, 0x0F).sw == core::sw::wrong_data);  // last block: not a package
  released("STORE DATA package refused");
  blocks(15);
  REQUIRE(run(s, select_applet()).sw == core::sw::ok);
  released("SELECT");
}
