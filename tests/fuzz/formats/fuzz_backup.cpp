// Backup package from untrusted bytes: the header parser, then open with a fixed chip key. Only
// keyline's typed errors may escape the parser; anything else (a Botan exception, a crash) is a bug.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/backup_package.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const BackupHeader h = parse_backup_header(data, size);
    if (h.version != kBackupVersion || h.aead != kAeadAes256Gcm) std::abort();
    const SecureBytes chip_key(32, 0x11);
    open_backup(chip_key, h.chip_id, Bytes(data, data + size));
  } catch (const FormatError&) {
  } catch (const CryptoError&) {
  }
  return 0;
}
