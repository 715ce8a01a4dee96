// The personalization applet's dialect (docs/protocol.md sections 2-4), defined once: the AID, the
// header of every command, and for every structured answer a struct, the one parser the station and
// the recovery tool use and the encoder the device emulator answers with. A parser checks every
// length before it reads a byte and throws FormatError(BadApdu) for anything but the one layout;
// the device's answers are untrusted input (a rewriting proxy may sit on the link).
#pragma once

#include <array>
#include <cstdint>
#include <optional>

#include "keyline/core/apdu.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"
#include "keyline/core/flash_image.h"
#include "keyline/core/imei.h"

namespace keyline::core::applet {

// Personalization applet AID (docs/design.md section 6): F0 (proprietary RID range) || "KEYLINE".
constexpr std::uint8_t kAid[] = {0xF0, 0x4B, 0x45, 0x59, 0x4C, 0x49, 0x4E, 0x45};

// ISO 7816-4 section 5.4.1: CLA 00 interindustry, 80 proprietary; bit 10 marks command chaining.
constexpr std::uint8_t kClaIso = 0x00;
constexpr std::uint8_t kClaProprietary = 0x80;

namespace ins {
constexpr std::uint8_t select = 0xA4;
constexpr std::uint8_t get_response = 0xC0;
constexpr std::uint8_t get_data = 0xCA;
constexpr std::uint8_t store_data = 0xE2;
constexpr std::uint8_t update_binary = 0xD6;
constexpr std::uint8_t boot_staged = 0xC2;
constexpr std::uint8_t status = 0xC4;
constexpr std::uint8_t restore_drill = 0xC6;
constexpr std::uint8_t reset_blank = 0xC8;
}  // namespace ins

// GET DATA tags (P1 || P2).
namespace tag {
constexpr std::uint16_t cplc = 0x9F7F;
constexpr std::uint16_t backup = 0xDF20;
}  // namespace tag

// SELECT P1: by DF name (ISO 7816-4 section 11.1.1).
constexpr std::uint8_t kSelectByName = 0x04;
// STORE DATA P1 (GlobalPlatform Card Specification v2.3 section 11.11.2.1): b4 DGI format, b8 last block.
constexpr std::uint8_t kStoreDgiFormat = 0x08;
constexpr std::uint8_t kStoreLastBlock = 0x80;
// UPDATE BINARY offsets are 15 bits: P1 b8 = 0 (ISO 7816-4 section 7.2.2, no short EF identifier).
constexpr std::size_t kMaxUpdateOffset = 0x7FFF;

// --- commands ----------------------------------------------------------------------------------
CommandApdu select_command();                       // 00 A4 04 00 08 AID
CommandApdu status_command();                       // 80 C4 00 00 00
CommandApdu get_cplc_command();                     // 80 CA 9F 7F 00
CommandApdu get_backup_command(bool extended);      // 80 CA DF 20, Le all (short 256 or extended 65536)
// 80 E2 P1 P2 Lc data: P1 = DGI format (| last block), P2 = block number.
CommandApdu store_data_command(std::uint8_t block, bool last, SecureBytes data);
// 80 C6 00 00 [Lc backup] Le: without a backup the device opens the one in its flash.
CommandApdu restore_drill_command(const Bytes& backup, bool extended);
// 00 D6 P1 P2 Lc data, offset = P1 (7 bits) || P2. Throws FormatError(BadApdu) past kMaxUpdateOffset.
CommandApdu update_binary_command(std::size_t offset, SecureBytes data);
CommandApdu boot_staged_command();                  // 80 C2 00 00 00
CommandApdu reset_blank_command();                  // 80 C8 00 00

// --- STATUS (80 C4) ----------------------------------------------------------------------------
// lifecycle (1) || chip ID (10) || flash state (1) || IMEI (15 ASCII digits, only when personalized).
enum class Lifecycle : std::uint8_t { Blank = 0x01, Personalized = 0x0F };
enum class FlashState : std::uint8_t { Empty = 0x00, Boots = 0x01, DoesNotBoot = 0x02 };
constexpr std::size_t kStatusSize = 1 + kChipIdSize + 1;
constexpr std::size_t kStatusSizeWithImei = kStatusSize + 15;

struct Status {
  Lifecycle lifecycle = Lifecycle::Blank;
  ChipId chip_id;
  FlashState flash = FlashState::Empty;
  std::optional<Imei> imei;  // only on a PERSONALIZED device (a fuse burnt without one has none)
  bool personalized() const noexcept { return lifecycle == Lifecycle::Personalized; }
};
// Exactly 12 or 27 bytes, a known lifecycle and flash state, an IMEI only when PERSONALIZED and then
// a valid one (TS 23.003 check digit). Throws FormatError(BadApdu).
Status parse_status(const std::uint8_t* data, std::size_t len);
inline Status parse_status(const SecureBytes& b) { return parse_status(b.data(), b.size()); }
// Throws FormatError(BadApdu) for a BLANK status with an IMEI (a layout parse_status refuses).
SecureBytes encode_status(const Status& s);

// --- BOOT STAGED (80 C2) answer ----------------------------------------------------------------
// IMEI (15 ASCII) || SHA-256 of the identity public key (32) || SHA-256 of the transport public key
// (32): the raw key bits (uncompressed EC point; 32-byte X25519 key), docs/protocol.md section 4.
using KeyDigest = std::array<std::uint8_t, 32>;
constexpr std::size_t kBootAnswerSize = 15 + 32 + 32;

struct BootAnswer {
  Imei imei = Imei::parse("490154203237518");  // Imei has no empty value; always overwritten by the parser
  KeyDigest identity_key_sha256{};
  KeyDigest transport_key_sha256{};
};
// Exactly 79 bytes with a valid IMEI. Throws FormatError(BadApdu).
BootAnswer parse_boot_answer(const std::uint8_t* data, std::size_t len);
inline BootAnswer parse_boot_answer(const SecureBytes& b) { return parse_boot_answer(b.data(), b.size()); }
SecureBytes encode_boot_answer(const BootAnswer& a);

// --- RESTORE DRILL (80 C6) answer: core::package_digest of the package inside (32 bytes) --------
constexpr std::size_t kDrillAnswerSize = 32;
// Exactly 32 bytes. Throws FormatError(BadApdu).
Bytes parse_drill_answer(const std::uint8_t* data, std::size_t len);
inline Bytes parse_drill_answer(const SecureBytes& b) { return parse_drill_answer(b.data(), b.size()); }
// Throws FormatError(BadApdu) unless the digest is 32 bytes.
SecureBytes encode_drill_answer(const Bytes& digest);

// --- GET DATA DF20 answer: the backup package, as the station publishes it -----------------------
struct BackupAnswer {
  BackupHeader header;
  Bytes backup;  // the whole package, header included
};
// A backup package header and tag (parse_backup_header) and at most kFlashMaxSize bytes in all.
// Throws FormatError(BadApdu) for the size, FormatError(BadBackupPackage) for the header.
BackupAnswer parse_backup_answer(const std::uint8_t* data, std::size_t len);
inline BackupAnswer parse_backup_answer(const SecureBytes& b) { return parse_backup_answer(b.data(), b.size()); }

}  // namespace keyline::core::applet
