// Backup package (docs/design.md section 5), made by the device from the data package:
//   "KLBK" (backup code) || version (1) || AEAD id (1) || chip ID (10) || nonce (12) || AES-256-GCM(ciphertext || tag 16)
// The 28-byte header is the associated data, so a package moved to another chip or changed by one
// bit does not open. The key is HKDF-SHA256 (RFC 5869) of the chip key with salt = chip ID and
// info = "keyline/backup/v1"; the chip key never leaves the device, so only that chip opens it.
#pragma once

#include <array>
#include <cstdint>

#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"

namespace keyline::core {

constexpr std::uint8_t kBackupVersion = 1;
constexpr std::uint8_t kAeadAes256Gcm = 1;
constexpr std::size_t kBackupHeaderSize = 4 + 1 + 1 + kChipIdSize + 12;
constexpr std::size_t kBackupTagSize = 16;

struct BackupHeader {
  std::uint8_t version = kBackupVersion;
  std::uint8_t aead = kAeadAes256Gcm;
  ChipId chip_id;
  std::array<std::uint8_t, 12> nonce{};
};

// Parses and checks the header only (magic, version, AEAD id, minimum length). Anyone can do this:
// the public DB and recovery check that the header names the record's chip.
// Throws FormatError(BadBackupPackage).
BackupHeader parse_backup_header(const std::uint8_t* data, std::size_t len);
inline BackupHeader parse_backup_header(const Bytes& b) { return parse_backup_header(b.data(), b.size()); }

// Device side. chip_key is the 32-byte secret; nonce from the system RNG.
Bytes seal_backup(const SecureBytes& chip_key, const ChipId& chip_id, const SecureBytes& plaintext);
// Throws FormatError(BadBackupPackage) on a bad header, CryptoError(BackupDoesNotOpen) when the
// chip ID differs or authentication fails.
SecureBytes open_backup(const SecureBytes& chip_key, const ChipId& chip_id, const Bytes& package);

}  // namespace keyline::core
