#include "keyline/core/applet_protocol.h"

#include <string>

#include "keyline/core/error.h"

namespace keyline::core::applet {

namespace {

[[noreturn]] void bad(const char* what, const std::string& why) {
  throw FormatError(ErrorCode::BadApdu, std::string(what) + ": " + why);
}

std::string bytes_text(std::size_t n) { return std::to_string(n) + " bytes"; }

CommandApdu command(std::uint8_t cla, std::uint8_t ins, std::uint8_t p1, std::uint8_t p2,
                    std::optional<std::uint32_t> le) {
  CommandApdu c;
  c.cla = cla;
  c.ins = ins;
  c.p1 = p1;
  c.p2 = p2;
  c.le = le;
  return c;
}

// A 15-byte ASCII field that must be an IMEI; Imei::parse's own error would name the wrong format.
Imei imei_field(const char* what, const std::uint8_t* p) {
  const std::string text(reinterpret_cast<const char*>(p), 15);
  if (!Imei::is_valid(text)) bad(what, "the IMEI field is not an IMEI");
  return Imei::parse(text);
}

}  // namespace

CommandApdu select_command() {
  auto c = command(kClaIso, ins::select, kSelectByName, 0x00, std::nullopt);
  c.data.assign(std::begin(kAid), std::end(kAid));
  return c;
}

CommandApdu status_command() { return command(kClaProprietary, ins::status, 0x00, 0x00, 256u); }

CommandApdu get_cplc_command() {
  return command(kClaProprietary, ins::get_data, tag::cplc >> 8, tag::cplc & 0xFF, 256u);
}

CommandApdu get_backup_command(bool extended) {
  // ISO 7816-4 section 5.1: Le 256 (short) / 65536 (extended) asks for everything available.
  auto c = command(kClaProprietary, ins::get_data, tag::backup >> 8, tag::backup & 0xFF, extended ? 65536u : 256u);
  c.extended = extended;
  return c;
}

CommandApdu store_data_command(std::uint8_t block, bool last, SecureBytes data) {
  const auto p1 = static_cast<std::uint8_t>(kStoreDgiFormat | (last ? kStoreLastBlock : 0x00));
  auto c = command(kClaProprietary, ins::store_data, p1, block, std::nullopt);
  c.data = std::move(data);
  return c;
}

CommandApdu restore_drill_command(const Bytes& backup, bool extended) {
  auto c = command(kClaProprietary, ins::restore_drill, 0x00, 0x00, 256u);
  c.data.assign(backup.begin(), backup.end());
  c.extended = extended;
  return c;
}

CommandApdu update_binary_command(std::size_t offset, SecureBytes data) {
  if (offset > kMaxUpdateOffset) bad("UPDATE BINARY", "offset " + std::to_string(offset) + " needs more than 15 bits");
  auto c = command(kClaIso, ins::update_binary, static_cast<std::uint8_t>(offset >> 8),
                   static_cast<std::uint8_t>(offset & 0xFF), std::nullopt);
  c.data = std::move(data);
  return c;
}

CommandApdu boot_staged_command() { return command(kClaProprietary, ins::boot_staged, 0x00, 0x00, 256u); }

CommandApdu reset_blank_command() { return command(kClaProprietary, ins::reset_blank, 0x00, 0x00, std::nullopt); }

Status parse_status(const std::uint8_t* data, std::size_t len) {
  if (data == nullptr || (len != kStatusSize && len != kStatusSizeWithImei))
    bad("STATUS answer", "has " + bytes_text(len) + ", expected 12 or 27");
  Status s;
  if (data[0] != static_cast<std::uint8_t>(Lifecycle::Blank) &&
      data[0] != static_cast<std::uint8_t>(Lifecycle::Personalized))
    bad("STATUS answer", "unknown lifecycle byte " + to_hex(data, 1));
  s.lifecycle = static_cast<Lifecycle>(data[0]);
  s.chip_id = ChipId::from_bytes(data + 1, kChipIdSize);
  const std::uint8_t flash = data[1 + kChipIdSize];
  if (flash > static_cast<std::uint8_t>(FlashState::DoesNotBoot))
    bad("STATUS answer", "unknown flash state " + to_hex(&flash, 1));
  s.flash = static_cast<FlashState>(flash);
  if (len == kStatusSizeWithImei) {
    if (!s.personalized()) bad("STATUS answer", "a BLANK device reports an IMEI");
    s.imei = imei_field("STATUS answer", data + kStatusSize);
  }
  return s;
}

SecureBytes encode_status(const Status& s) {
  if (s.imei && !s.personalized()) bad("STATUS answer", "a BLANK device has no IMEI");
  SecureBytes out;
  out.reserve(kStatusSizeWithImei);
  out.push_back(static_cast<std::uint8_t>(s.lifecycle));
  out.insert(out.end(), s.chip_id.bytes().begin(), s.chip_id.bytes().end());
  out.push_back(static_cast<std::uint8_t>(s.flash));
  if (s.imei) out.insert(out.end(), s.imei->str().begin(), s.imei->str().end());
  return out;
}

BootAnswer parse_boot_answer(const std::uint8_t* data, std::size_t len) {
  if (data == nullptr || len != kBootAnswerSize)
    bad("BOOT STAGED answer", "has " + bytes_text(len) + ", expected " + std::to_string(kBootAnswerSize));
  BootAnswer a;
  a.imei = imei_field("BOOT STAGED answer", data);
  std::copy(data + 15, data + 47, a.identity_key_sha256.begin());
  std::copy(data + 47, data + kBootAnswerSize, a.transport_key_sha256.begin());
  return a;
}

SecureBytes encode_boot_answer(const BootAnswer& a) {
  SecureBytes out(a.imei.str().begin(), a.imei.str().end());
  out.insert(out.end(), a.identity_key_sha256.begin(), a.identity_key_sha256.end());
  out.insert(out.end(), a.transport_key_sha256.begin(), a.transport_key_sha256.end());
  return out;
}

Bytes parse_drill_answer(const std::uint8_t* data, std::size_t len) {
  if (data == nullptr || len != kDrillAnswerSize)
    bad("RESTORE DRILL answer", "has " + bytes_text(len) + ", expected a 32-byte SHA-256 digest");
  return Bytes(data, data + len);
}

SecureBytes encode_drill_answer(const Bytes& digest) {
  if (digest.size() != kDrillAnswerSize) bad("RESTORE DRILL answer", "digest of " + bytes_text(digest.size()));
  return SecureBytes(digest.begin(), digest.end());
}

BackupAnswer parse_backup_answer(const std::uint8_t* data, std::size_t len) {
  if (len > kFlashMaxSize)
    bad("GET DATA backup answer", "has " + bytes_text(len) + ", more than a flash image holds");
  BackupAnswer a;
  a.header = parse_backup_header(data, len);
  a.backup.assign(data, data + len);
  return a;
}

}  // namespace keyline::core::applet
