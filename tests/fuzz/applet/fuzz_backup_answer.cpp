// GET DATA DF20 answer from untrusted bytes (core::applet::parse_backup_answer): a backup header the
// station checks against the chip, and the bytes it publishes unchanged. Only FormatError may escape.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const applet::BackupAnswer a = applet::parse_backup_answer(data, size);
    if (a.backup != Bytes(data, data + size)) std::abort();
    if (size < kBackupHeaderSize + kBackupTagSize || size > kFlashMaxSize) std::abort();
    if (!ChipId::is_valid(a.header.chip_id.str())) std::abort();
  } catch (const FormatError&) {
  }
  return 0;
}
