#include "keyline/core/backup_package.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

#include <botan/aead.h>
#include <botan/exceptn.h>
#include <botan/kdf.h>
#include <botan/system_rng.h>

#include "keyline/core/error.h"

namespace keyline::core {

namespace {

constexpr char kMagic[4] = {'K', 'L', 'B', 'K'};
constexpr std::size_t kChipKeySize = 32;
constexpr char kKdfInfo[] = "keyline/backup/v1";

[[noreturn]] void bad(const std::string& what) {
  throw FormatError(ErrorCode::BadBackupPackage, "backup package: " + what);
}
[[noreturn]] void does_not_open(const std::string& what) {
  throw CryptoError(ErrorCode::BackupDoesNotOpen, "backup package does not open: " + what);
}

Bytes encode_header(const BackupHeader& h) {
  Bytes out(kMagic, kMagic + 4);
  out.push_back(h.version);
  out.push_back(h.aead);
  out.insert(out.end(), h.chip_id.bytes().begin(), h.chip_id.bytes().end());
  out.insert(out.end(), h.nonce.begin(), h.nonce.end());
  return out;
}

// RFC 5869 HKDF-SHA256: IKM = chip key, salt = chip ID bytes, info = "keyline/backup/v1", L = 32.
SecureBytes derive_key(const SecureBytes& chip_key, const ChipId& chip_id) {
  if (chip_key.size() != kChipKeySize)
    throw CryptoError(ErrorCode::Crypto, "chip key must be 32 bytes, got " + std::to_string(chip_key.size()));
  // KDF::create_or_throw, not get_kdf: get_kdf hands out an owning raw pointer (it leaked here).
  const std::unique_ptr<Botan::KDF> kdf = Botan::KDF::create_or_throw("HKDF(SHA-256)");
  const auto& salt = chip_id.bytes();
  return kdf->derive_key(32, chip_key.data(), chip_key.size(), salt.data(), salt.size(),
                         reinterpret_cast<const std::uint8_t*>(kKdfInfo), sizeof(kKdfInfo) - 1);
}

}  // namespace

BackupHeader parse_backup_header(const std::uint8_t* data, std::size_t len) {
  if (data == nullptr || len < kBackupHeaderSize + kBackupTagSize)
    bad("shorter than header and tag (" + std::to_string(len) + " bytes)");
  if (std::memcmp(data, kMagic, 4) != 0) bad("missing backup code KLBK");
  BackupHeader h;
  h.version = data[4];
  if (h.version != kBackupVersion) bad("unsupported version " + std::to_string(h.version));
  h.aead = data[5];
  if (h.aead != kAeadAes256Gcm) bad("unsupported AEAD id " + std::to_string(h.aead));
  h.chip_id = ChipId::from_bytes(data + 6, kChipIdSize);
  std::copy(data + 6 + kChipIdSize, data + kBackupHeaderSize, h.nonce.begin());
  return h;
}

Bytes seal_backup(const SecureBytes& chip_key, const ChipId& chip_id, const SecureBytes& plaintext) {
  const SecureBytes key = derive_key(chip_key, chip_id);
  BackupHeader h;
  h.chip_id = chip_id;
  Botan::system_rng().randomize(h.nonce.data(), h.nonce.size());
  Bytes out = encode_header(h);

  auto aead = Botan::AEAD_Mode::create_or_throw("AES-256/GCM", Botan::ENCRYPTION);
  aead->set_key(key);
  aead->set_associated_data(out.data(), out.size());  // the 28-byte header
  aead->start(h.nonce.data(), h.nonce.size());
  SecureBytes buf = plaintext;
  aead->finish(buf);
  out.insert(out.end(), buf.begin(), buf.end());
  return out;
}

SecureBytes open_backup(const SecureBytes& chip_key, const ChipId& chip_id, const Bytes& package) {
  const BackupHeader h = parse_backup_header(package);
  if (h.chip_id != chip_id) does_not_open("made for chip " + h.chip_id.str() + ", not " + chip_id.str());
  const SecureBytes key = derive_key(chip_key, chip_id);

  auto aead = Botan::AEAD_Mode::create_or_throw("AES-256/GCM", Botan::DECRYPTION);
  aead->set_key(key);
  aead->set_associated_data(package.data(), kBackupHeaderSize);
  aead->start(h.nonce.data(), h.nonce.size());
  SecureBytes buf(package.begin() + kBackupHeaderSize, package.end());
  try {
    aead->finish(buf);
  } catch (const Botan::Invalid_Authentication_Tag&) {
    does_not_open("authentication failed");
  }
  return buf;
}

}  // namespace keyline::core
