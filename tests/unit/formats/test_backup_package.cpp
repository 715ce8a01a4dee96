// Backup package: seal/open, binding to the chip ID, integrity of every bit, header parsing.
#include <doctest/doctest.h>

#include <fstream>
#include <iterator>
#include <string>

#include "keyline/core/backup_package.h"
#include "keyline/core/error.h"
#include "testenv.h"

using namespace keyline::core;

namespace {

SecureBytes chip_key(std::uint8_t seed) {
  SecureBytes k(32);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(seed + i * 7);
  return k;
}

const ChipId kChip = ChipId::parse("4790507200000001A0B1");
const ChipId kOtherChip = ChipId::parse("4790507200000002A0B1");

}  // namespace

TEST_CASE("backup: seal then open round trip, header as documented") {
  const SecureBytes pt = {'d', 'a', 't', 'a', ' ', 'p', 'a', 'c', 'k', 'a', 'g', 'e'};
  const Bytes pkg = seal_backup(chip_key(1), kChip, pt);
  REQUIRE(pkg.size() == kBackupHeaderSize + pt.size() + kBackupTagSize);
  CHECK(std::string(pkg.begin(), pkg.begin() + 4) == "KLBK");
  CHECK(pkg[4] == kBackupVersion);
  CHECK(pkg[5] == kAeadAes256Gcm);
  const BackupHeader h = parse_backup_header(pkg);
  CHECK(h.chip_id == kChip);
  CHECK(Bytes(pkg.begin() + 6, pkg.begin() + 16) == Bytes(kChip.bytes().begin(), kChip.bytes().end()));
  CHECK(open_backup(chip_key(1), kChip, pkg) == pt);
  // Fresh nonce each time: the same plaintext never gives the same package.
  const Bytes again = seal_backup(chip_key(1), kChip, pt);
  CHECK(again != pkg);
  CHECK(parse_backup_header(again).nonce != h.nonce);
  // An empty plaintext is still a valid package.
  CHECK(open_backup(chip_key(1), kChip, seal_backup(chip_key(1), kChip, {})).empty());
}

TEST_CASE("backup: a package does not open on another chip or under another key") {
  const Bytes pkg = seal_backup(chip_key(1), kChip, SecureBytes{1, 2, 3});
  try {
    open_backup(chip_key(1), kOtherChip, pkg);
    FAIL("opened on another chip");
  } catch (const CryptoError& e) {
    CHECK(e.code() == ErrorCode::BackupDoesNotOpen);
  }
  CHECK_THROWS_AS(open_backup(chip_key(2), kChip, pkg), CryptoError);

  // Moved to another chip: header rewritten to name the other chip, opened with that chip's key
  // (the attacker's best case: they control the target device but not the original chip key).
  Bytes moved = pkg;
  std::copy(kOtherChip.bytes().begin(), kOtherChip.bytes().end(), moved.begin() + 6);
  try {
    open_backup(chip_key(1), kOtherChip, moved);
    FAIL("moved package opened");
  } catch (const CryptoError& e) {
    CHECK(e.code() == ErrorCode::BackupDoesNotOpen);
  }
  CHECK_THROWS_AS(open_backup(chip_key(2), kOtherChip, moved), CryptoError);
}

TEST_CASE("backup: every single-bit flip is refused") {
  const Bytes pkg = seal_backup(chip_key(3), kChip, SecureBytes{0x10, 0x20, 0x30, 0x40, 0x50});
  std::size_t refused = 0;
  for (std::size_t bit = 0; bit < pkg.size() * 8; ++bit) {
    Bytes bad = pkg;
    bad[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
    try {
      open_backup(chip_key(3), kChip, bad);
      FAIL("bit " << bit << " flipped and the package still opened");
    } catch (const FormatError& e) {
      CHECK(e.code() == ErrorCode::BadBackupPackage);  // magic, version, AEAD id
      ++refused;
    } catch (const CryptoError& e) {
      CHECK(e.code() == ErrorCode::BackupDoesNotOpen);  // chip ID, nonce, ciphertext, tag
      ++refused;
    }
  }
  CHECK(refused == pkg.size() * 8);
}

TEST_CASE("backup: header parse errors") {
  const Bytes good = seal_backup(chip_key(4), kChip, SecureBytes{9});
  auto code_of = [](const Bytes& b) {
    try {
      parse_backup_header(b);
    } catch (const FormatError& e) {
      return e.code();
    }
    return ErrorCode::Crypto;  // "parsed": never a header error code
  };
  CHECK(code_of(good) == ErrorCode::Crypto);
  for (std::size_t n = 0; n < kBackupHeaderSize + kBackupTagSize; ++n) {
    CAPTURE(n);
    CHECK(code_of(Bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n))) == ErrorCode::BadBackupPackage);
  }
  Bytes b = good;
  b[0] = 'X';
  CHECK(code_of(b) == ErrorCode::BadBackupPackage);
  b = good;
  b[4] = 2;
  CHECK(code_of(b) == ErrorCode::BadBackupPackage);
  b = good;
  b[5] = 0;
  CHECK(code_of(b) == ErrorCode::BadBackupPackage);
  CHECK_THROWS_AS(parse_backup_header(nullptr, 0), FormatError);
  // Opening a truncated package is a format error, not a crash or a crypto error.
  CHECK_THROWS_AS(open_backup(chip_key(4), kChip, Bytes(good.begin(), good.begin() + 30)), FormatError);
}

TEST_CASE("backup: chip key must be 32 bytes") {
  CHECK_THROWS_AS(seal_backup(SecureBytes(16, 1), kChip, SecureBytes{1}), CryptoError);
  const Bytes pkg = seal_backup(chip_key(5), kChip, SecureBytes{1});
  CHECK_THROWS_AS(open_backup(SecureBytes(31, 1), kChip, pkg), CryptoError);
}

TEST_CASE("backup: a package sealed by an independent implementation opens") {
  // tests/fuzz/corpus/backup/opens was made with Python's `cryptography` (HKDF-SHA256 + AES-256-GCM)
  // from the description in backup_package.h: chip key 32 x 0x11, chip 4790507200000001A0B1,
  // nonce 00..0B, plaintext "data package bytes". It checks the KDF inputs and the AAD, not just
  // that this code agrees with itself.
  const std::string path = keyline::test::source_dir() + "/tests/fuzz/corpus/backup/opens";
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot read " << path);
  const Bytes pkg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string pt = "data package bytes";
  CHECK(open_backup(SecureBytes(32, 0x11), kChip, pkg) == SecureBytes(pt.begin(), pt.end()));
}
