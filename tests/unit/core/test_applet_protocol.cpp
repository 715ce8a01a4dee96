// core::applet: the one definition of the applet's answers (issue 12). Every parser takes exactly its
// layout and throws FormatError(BadApdu) otherwise; in particular the 11-byte STATUS answer that made
// the station build a string from past-the-end iterators. Run under ASan+UBSan by scripts/test.sh.
#include <doctest/doctest.h>

#include <functional>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/error.h"

using namespace keyline;
namespace applet = core::applet;

namespace {

const core::ChipId kChip = core::ChipId::parse("4B4C0001A1B2C3D4E5F6");
const char kImei[] = "490154203237518";

core::ErrorCode code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const core::FormatError& e) {
    return e.code();
  } catch (const core::Error& e) {
    FAIL("not a FormatError: " << e.what());
  }
  FAIL("no error thrown");
  return core::ErrorCode::Io;
}

core::SecureBytes status_bytes(std::uint8_t lifecycle, std::uint8_t flash, const std::string& imei = {}) {
  core::SecureBytes b{lifecycle};
  b.insert(b.end(), kChip.bytes().begin(), kChip.bytes().end());
  b.push_back(flash);
  b.insert(b.end(), imei.begin(), imei.end());
  return b;
}

}  // namespace

TEST_CASE("STATUS: the 11-byte answer (lifecycle and chip ID, no flash byte) is a typed error") {
  // The station's old check (size < 1 + 10) let this through and then read the IMEI from
  // begin() + 12 .. end(), a range that starts past the end.
  core::SecureBytes eleven = status_bytes(0x0F, 0x01);
  eleven.pop_back();
  REQUIRE(eleven.size() == 11);
  CHECK(code_of([&] { applet::parse_status(eleven); }) == core::ErrorCode::BadApdu);
}

TEST_CASE("STATUS: every length but 12 and 27 is refused") {
  const core::SecureBytes full = status_bytes(0x0F, 0x01, kImei);
  for (std::size_t n = 0; n <= full.size() + 3; ++n) {
    if (n == applet::kStatusSize || n == applet::kStatusSizeWithImei) continue;
    CAPTURE(n);
    core::SecureBytes b = full;
    b.resize(n, '0');
    CHECK(code_of([&] { applet::parse_status(b); }) == core::ErrorCode::BadApdu);
  }
  CHECK(code_of([] { applet::parse_status(nullptr, 0); }) == core::ErrorCode::BadApdu);
}

TEST_CASE("STATUS: blank and personalized answers parse, and encode back to the same bytes") {
  const auto blank = applet::parse_status(status_bytes(0x01, 0x00));
  CHECK_FALSE(blank.personalized());
  CHECK(blank.chip_id == kChip);
  CHECK(blank.flash == applet::FlashState::Empty);
  CHECK_FALSE(blank.imei);
  CHECK(applet::encode_status(blank) == status_bytes(0x01, 0x00));

  const auto pers = applet::parse_status(status_bytes(0x0F, 0x02, kImei));
  CHECK(pers.personalized());
  CHECK(pers.flash == applet::FlashState::DoesNotBoot);
  REQUIRE(pers.imei);
  CHECK(pers.imei->str() == kImei);
  CHECK(applet::encode_status(pers) == status_bytes(0x0F, 0x02, kImei));
  // A fuse burnt without an IMEI (docs/protocol.md section 5) still reports PERSONALIZED.
  CHECK(applet::parse_status(status_bytes(0x0F, 0x01)).personalized());
}

TEST_CASE("STATUS: unknown lifecycle or flash bytes, an IMEI on a blank device, a bad IMEI") {
  CHECK(code_of([] { applet::parse_status(status_bytes(0x00, 0x00)); }) == core::ErrorCode::BadApdu);
  CHECK(code_of([] { applet::parse_status(status_bytes(0x07, 0x00)); }) == core::ErrorCode::BadApdu);
  CHECK(code_of([] { applet::parse_status(status_bytes(0x01, 0x03)); }) == core::ErrorCode::BadApdu);
  CHECK(code_of([] { applet::parse_status(status_bytes(0x01, 0x00, kImei)); }) == core::ErrorCode::BadApdu);
  CHECK(code_of([] { applet::parse_status(status_bytes(0x0F, 0x01, "490154203237519")); }) ==
        core::ErrorCode::BadApdu);  // check digit
  CHECK(code_of([] { applet::parse_status(status_bytes(0x0F, 0x01, "49015420323751A")); }) == core::ErrorCode::BadApdu);
  applet::Status s;
  s.imei = core::Imei::parse(kImei);  // BLANK with an IMEI: the encoder refuses what the parser would
  CHECK(code_of([&] { applet::encode_status(s); }) == core::ErrorCode::BadApdu);
}

TEST_CASE("BOOT STAGED answer: exactly IMEI and two digests") {
  applet::BootAnswer a;
  a.imei = core::Imei::parse(kImei);
  a.identity_key_sha256.fill(0x11);
  a.transport_key_sha256.fill(0x22);
  const core::SecureBytes enc = applet::encode_boot_answer(a);
  REQUIRE(enc.size() == applet::kBootAnswerSize);
  const auto back = applet::parse_boot_answer(enc);
  CHECK(back.imei == a.imei);
  CHECK(back.identity_key_sha256 == a.identity_key_sha256);
  CHECK(back.transport_key_sha256 == a.transport_key_sha256);
  for (std::size_t n : {0, 1, 14, 15, 46, 47, 48, 78, 80, 200}) {
    CAPTURE(n);
    core::SecureBytes b = enc;
    b.resize(n, 0x33);
    CHECK(code_of([&] { applet::parse_boot_answer(b); }) == core::ErrorCode::BadApdu);
  }
  core::SecureBytes bad = enc;
  bad[0] = 'x';
  CHECK(code_of([&] { applet::parse_boot_answer(bad); }) == core::ErrorCode::BadApdu);
}

TEST_CASE("RESTORE DRILL answer: exactly one SHA-256 digest") {
  const core::Bytes digest(32, 0x5C);
  CHECK(applet::parse_drill_answer(applet::encode_drill_answer(digest)) == digest);
  for (std::size_t n : {0, 1, 31, 33, 64}) {
    CAPTURE(n);
    const core::SecureBytes b(n, 0x5C);
    CHECK(code_of([&] { applet::parse_drill_answer(b); }) == core::ErrorCode::BadApdu);
    if (n != 32) CHECK(code_of([&] { applet::encode_drill_answer(core::Bytes(n)); }) == core::ErrorCode::BadApdu);
  }
}

TEST_CASE("GET DATA backup answer: a backup header for a chip, nothing shorter") {
  core::SecureBytes b{'K', 'L', 'B', 'K', 0x01, 0x01};
  b.insert(b.end(), kChip.bytes().begin(), kChip.bytes().end());
  b.resize(core::kBackupHeaderSize + 16 + 5, 0x00);  // nonce, some ciphertext, tag
  const auto a = applet::parse_backup_answer(b);
  CHECK(a.header.chip_id == kChip);
  CHECK(a.backup == core::Bytes(b.begin(), b.end()));
  b.resize(core::kBackupHeaderSize);  // no tag
  CHECK(code_of([&] { applet::parse_backup_answer(b); }) == core::ErrorCode::BadBackupPackage);
  CHECK(code_of([] { applet::parse_backup_answer(nullptr, 0); }) == core::ErrorCode::BadBackupPackage);
}

TEST_CASE("commands: the headers of docs/protocol.md section 2") {
  const auto enc = [](const core::CommandApdu& c) {
    const core::SecureBytes b = core::encode_command(c);
    return core::to_hex(b.data(), b.size());
  };
  CHECK(enc(applet::select_command()) == "00A4040008F04B45594C494E45");
  CHECK(enc(applet::status_command()) == "80C4000000");
  CHECK(enc(applet::get_cplc_command()) == "80CA9F7F00");
  CHECK(enc(applet::get_backup_command(false)) == "80CADF2000");
  CHECK(enc(applet::get_backup_command(true)) == "80CADF20000000");
  CHECK(enc(applet::boot_staged_command()) == "80C2000000");
  CHECK(enc(applet::reset_blank_command()) == "80C80000");
  CHECK(enc(applet::store_data_command(3, true, {0xAA})) == "80E28803" "01AA");
  CHECK(enc(applet::store_data_command(0, false, {0xAA})) == "80E20800" "01AA");
  CHECK(enc(applet::update_binary_command(0x7FFF, {0xAA})) == "00D67FFF01AA");
  CHECK(code_of([] { applet::update_binary_command(0x8000, {0xAA}); }) == core::ErrorCode::BadApdu);
  CHECK(enc(applet::restore_drill_command({}, false)) == "80C6000000");
}
