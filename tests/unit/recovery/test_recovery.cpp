// keyline-recovery's parts that need no device or server: the checks before writing, the
// UPDATE BINARY plan, the boot answer, bundles, exit codes. The whole tool runs in tests/e2e/recovery.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>

#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/flash_image.h"
#include "keyline/recovery/errors.h"
#include "keyline/recovery/recovery.h"

using namespace keyline;
using core::ChipId;
using core::Imei;

namespace {

struct Fixture {
  Botan::AutoSeeded_RNG rng;
  Botan::EC_Group p256{"secp256r1"};
  Botan::ECDSA_PrivateKey root_key{rng, p256};
  Botan::ECDSA_PrivateKey ca_key{rng, p256};
  Botan::ECDSA_PrivateKey device_key{rng, p256};
  Botan::X509_Certificate root = core::make_root_certificate(root_key, "Test Root", "keyline test", rng);
  Botan::X509_Certificate ca = core::make_ca_certificate(root, root_key, ca_key, "Test Device CA", "keyline test", 0, rng);
  Imei imei = Imei::parse("357805023984942");
  ChipId chip = ChipId::parse("4B4C000112345678ABCD");
  core::SecureBytes chip_key = rng.random_vec(32);

  core::Record record_for(const ChipId& c, const Imei& i) {
    core::Record r;
    r.chip_id = c;
    r.imei = i;
    const auto cert = core::issue_identity_certificate(ca, ca_key, device_key, i, c, core::kDefaultHwType, rng);
    r.certificates = {cert.BER_encode(), ca.BER_encode()};
    core::SecureBytes plain(100, 0x42);
    r.backup = core::seal_backup(chip_key, c, plain);
    return r;
  }
};

Fixture& fx() {
  static Fixture f;
  return f;
}

core::ErrorCode code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const core::Error& e) {
    return e.code();
  }
  FAIL("no error thrown");
  return core::ErrorCode::Io;
}

}  // namespace

TEST_CASE("a record of this chip under the trust anchor verifies") {
  auto& f = fx();
  const auto r = f.record_for(f.chip, f.imei);
  CHECK_NOTHROW(recovery::verify_record(r, f.chip, {f.root}));
}

TEST_CASE("a record of another chip is refused before anything else") {
  auto& f = fx();
  const auto r = f.record_for(ChipId::parse("4B4C0001000000000001"), f.imei);
  CHECK(code_of([&] { recovery::verify_record(r, f.chip, {f.root}); }) == recovery::errc::VerificationFailed);
  try {
    recovery::verify_record(r, f.chip, {f.root});
  } catch (const core::Error& e) {
    CHECK(std::string(e.what()).find("the device is chip 4B4C000112345678ABCD") != std::string::npos);
  }
}

TEST_CASE("a wrong trust anchor, a certificate of another chip, a backup of another chip are refused") {
  auto& f = fx();
  Botan::ECDSA_PrivateKey other_key(f.rng, f.p256);
  const auto other_root = core::make_root_certificate(other_key, "Other Root", "other", f.rng);
  const auto good = f.record_for(f.chip, f.imei);
  CHECK(code_of([&] { recovery::verify_record(good, f.chip, {other_root}); }) == recovery::errc::VerificationFailed);

  auto swapped_cert = good;
  swapped_cert.certificates = f.record_for(ChipId::parse("4B4C0001000000000002"), f.imei).certificates;
  CHECK(code_of([&] { recovery::verify_record(swapped_cert, f.chip, {f.root}); }) == recovery::errc::VerificationFailed);

  auto swapped_backup = good;
  swapped_backup.backup = f.record_for(ChipId::parse("4B4C0001000000000003"), f.imei).backup;
  CHECK(code_of([&] { recovery::verify_record(swapped_backup, f.chip, {f.root}); }) == recovery::errc::VerificationFailed);

  auto other_imei = good;
  other_imei.imei = Imei::parse("490154203237518");
  CHECK(code_of([&] { recovery::verify_record(other_imei, f.chip, {f.root}); }) == recovery::errc::VerificationFailed);
}

TEST_CASE("UPDATE BINARY plan: 255-byte short APDUs, offset in P1 (bit 8 clear) || P2, the image reassembles") {
  core::Bytes image(2836);
  for (std::size_t i = 0; i < image.size(); ++i) image[i] = static_cast<std::uint8_t>(i * 7);
  const auto cmds = recovery::update_binary_commands(image);
  REQUIRE(cmds.size() == 12);
  core::Bytes back;
  for (const auto& c : cmds) {
    CHECK(c.cla == 0x00);
    CHECK(c.ins == 0xD6);
    CHECK((c.p1 & 0x80) == 0);
    CHECK(c.data.size() <= 255);
    const std::size_t off = (static_cast<std::size_t>(c.p1) << 8) | c.p2;
    CHECK(off == back.size());
    const auto enc = core::encode_command(c);
    CHECK(enc.size() == 5 + c.data.size());  // short form: no extended Lc
    back.insert(back.end(), c.data.begin(), c.data.end());
  }
  CHECK(back == image);
  CHECK(cmds.back().data.size() == 2836 - 11 * 255);
}

TEST_CASE("an image whose last offset passes 15 bits is refused before any command") {
  CHECK_NOTHROW(recovery::update_binary_commands(core::Bytes(0x7FFF / 255 * 255 + 255)));
  CHECK(code_of([] { recovery::update_binary_commands(core::Bytes(0x8000 + 300)); }) == recovery::errc::VerificationFailed);
  CHECK(code_of([] { recovery::update_binary_commands(core::Bytes{}); }) == recovery::errc::VerificationFailed);
}

TEST_CASE("boot answer: IMEI and fingerprints, wrong sizes and bad IMEIs are refused") {
  core::SecureBytes a(std::begin("357805023984942"), std::begin("357805023984942") + 15);
  a.resize(15 + 64, 0xAB);
  const auto ans = recovery::parse_boot_answer(a);
  CHECK(ans.imei.str() == "357805023984942");
  std::string ab;
  for (int i = 0; i < 32; ++i) ab += "AB";
  CHECK(ans.identity_key_sha256 == ab);
  CHECK(ans.identity_key_sha256.size() == 64);
  CHECK(ans.transport_key_sha256 == ans.identity_key_sha256);
  // One layout (core::applet::parse_boot_answer): the transport digest is not optional, and a
  // longer or shorter answer is refused with BadApdu rather than read past its end.
  for (std::size_t n : {0, 14, 15, 47, 50, 78, 80}) {
    CAPTURE(n);
    core::SecureBytes cut = a;
    cut.resize(n, 0xAB);
    CHECK(code_of([&] { recovery::parse_boot_answer(cut); }) == core::ErrorCode::BadApdu);
  }
  a[14] = '3';  // Luhn check digit wrong
  CHECK(code_of([&] { recovery::parse_boot_answer(a); }) == core::ErrorCode::BadApdu);
}

TEST_CASE("key fingerprint is SHA-256 of the subject public key bits, as the device reports it") {
  auto& f = fx();
  const auto r = f.record_for(f.chip, f.imei);
  const Botan::X509_Certificate cert(r.certificates.front());
  const auto fp = recovery::key_fingerprint(cert);
  CHECK(fp.size() == 64);
  CHECK(fp == recovery::key_fingerprint(Botan::X509_Certificate(f.record_for(f.chip, f.imei).certificates.front())));
  CHECK(fp != recovery::key_fingerprint(f.ca));
}

TEST_CASE("offline bundle: the record JSON round-trips, corrupt text names the reason") {
  auto& f = fx();
  const auto r = f.record_for(f.chip, f.imei);
  const std::string json = r.to_json("2026-01-01T00:00:00Z");
  CHECK(recovery::parse_bundle(json, "b.json").hash() == r.hash());
  std::string flipped = json;
  const auto pos = flipped.find("\"backup\":\"") + 14;
  flipped[pos] = flipped[pos] == 'A' ? 'B' : 'A';
  try {
    recovery::parse_bundle(flipped, "b.json");
    FAIL("corrupt bundle accepted");
  } catch (const core::Error& e) {
    CHECK(e.code() == recovery::errc::BadBundle);
    CHECK(std::string(e.what()).find("offline bundle b.json is corrupt") != std::string::npos);
  }
  CHECK(code_of([&] { recovery::parse_bundle(json.substr(0, json.size() / 2), "b.json"); }) == recovery::errc::BadBundle);
  CHECK(code_of([&] { recovery::parse_bundle("", "b.json"); }) == recovery::errc::BadBundle);
}

TEST_CASE("exit codes as --help documents them") {
  using recovery::exit_code_for;
  auto ex = [](core::ErrorCode c) { return exit_code_for(core::Error(c, "x")); };
  CHECK(ex(recovery::errc::NoRecord) == 7);
  CHECK(ex(recovery::errc::VerificationFailed) == 3);
  CHECK(ex(recovery::errc::BadBundle) == 3);
  CHECK(ex(recovery::errc::DbUnavailable) == 4);
  CHECK(ex(recovery::errc::DeviceUnreachable) == 4);
  CHECK(ex(recovery::errc::DeviceRefused) == 5);
  CHECK(ex(core::ErrorCode::Usage) == 2);
  CHECK(ex(core::ErrorCode::Config) == 2);
  CHECK(ex(core::ErrorCode::Pkcs11) == 1);
  for (const char* line : {"0  done", "2  usage", "3  verification failed", "4  the public DB", "5  the device refused", "7  no record"})
    CHECK(std::string(recovery::kExitCodeHelp).find(line) != std::string::npos);
}

TEST_CASE("run_guarded maps errors to exit codes and never throws") {
  CHECK(recovery::run_guarded([]() -> int { throw core::Error(recovery::errc::NoRecord, "none"); }) == 7);
  CHECK(recovery::run_guarded([]() -> int { throw std::runtime_error("x"); }) == 1);
  CHECK(recovery::run_guarded([]() -> int { return 0; }) == 0);
}

// A hostile public DB that answers a lookup with an endless body: the tool stops at the client's cap
// and says the answer is no record (exit 3), instead of filling the owner's memory or calling the DB
// unreachable.
TEST_CASE("a public DB answer past the client's cap is no record (exit 3), and reading stops") {
  const int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(lfd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(lfd, 4) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  std::atomic<std::size_t> sent{0};
  std::thread server([&] {
    const int c = ::accept(lfd, nullptr, nullptr);
    if (c < 0) return;
    char buf[4096];
    (void)::recv(c, buf, sizeof buf, 0);
    const std::string head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
    (void)::send(c, head.data(), head.size(), MSG_NOSIGNAL);
    const std::string chunk(64 * 1024, ' ');
    while (sent < (64u << 20)) {  // 64 MiB at most, so a broken client cannot hang the test
      const ssize_t n = ::send(c, chunk.data(), chunk.size(), MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<std::size_t>(n);
    }
    ::close(c);
  });
  recovery::DbOptions db;
  db.url = "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  db.attempts = 1;
  db.timeout = std::chrono::milliseconds(5000);
  int code = 0;
  try {
    (void)recovery::fetch_record_json(db, ChipId::parse("4B4C000112345678ABCD"));
  } catch (const core::Error& e) {
    code = e.numeric();
    CHECK(recovery::exit_code_for(e) == 3);
  }
  server.join();
  ::close(lfd);
  CHECK(code == static_cast<int>(recovery::errc::VerificationFailed));
  CHECK(sent < (8u << 20));  // the client hung up near its cap, long before the server's 64 MiB
}

// issue #13: the device is `--device HOST:PORT` or `--reader NAME`, exactly one, checked before the
// trust file, the bundle or any server is touched.
TEST_CASE("restore takes exactly one of --device and --reader, before anything else") {
  auto usage_text = [](recovery::RestoreOptions ro) -> std::string {
    try {
      (void)recovery::restore(ro, nullptr);
    } catch (const core::Error& e) {
      if (e.code() == core::ErrorCode::Usage) return e.what();
      return "code " + std::to_string(e.numeric());
    }
    return "no error";
  };
  recovery::RestoreOptions both;
  both.device = "127.0.0.1:1";
  both.reader = "keyline vpcd 0 00 00";
  CHECK(usage_text(both).find("exactly one of --device HOST:PORT or --reader NAME") != std::string::npos);
  CHECK(usage_text(recovery::RestoreOptions{}).find("exactly one of") != std::string::npos);
  recovery::RestoreOptions pcsc_in_device;
  pcsc_in_device.device = "pcsc:keyline vpcd 0 00 00";
  CHECK(usage_text(pcsc_in_device).find("a PC/SC reader goes in --reader") != std::string::npos);
}

// pcscd not running is said as such (1421, exit 4), not as "device unreachable".
TEST_CASE("restore --reader with no pcscd: PcscNoService, exit 4") {
  const std::string saved = std::getenv("PCSCLITE_CSOCK_NAME") ? std::getenv("PCSCLITE_CSOCK_NAME") : "";
  ::setenv("PCSCLITE_CSOCK_NAME", "/nonexistent/keyline-unit/pcscd.comm", 1);
  recovery::RestoreOptions ro;
  ro.reader = "keyline vpcd";
  int code = 0;
  try {
    (void)recovery::device_address(ro, nullptr);
  } catch (const core::Error& e) {
    code = e.numeric();
    CHECK(recovery::exit_code_for(e) == 4);
  }
  if (saved.empty()) ::unsetenv("PCSCLITE_CSOCK_NAME"); else ::setenv("PCSCLITE_CSOCK_NAME", saved.c_str(), 1);
  CHECK(code == static_cast<int>(core::ErrorCode::PcscNoService));
}
