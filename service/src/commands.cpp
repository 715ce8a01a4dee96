#include "commands.h"

#include <algorithm>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/dgi.h"
#include "keyline/core/error.h"
#include "keyline/core/scp11.h"

namespace keyline::service {
namespace {

std::vector<core::CommandApdu> pieces(std::uint8_t ins, std::uint8_t p1_base, const core::SecureBytes& all) {
  constexpr std::size_t kPiece = core::scp11::kMaxPlainPiece;
  const std::size_t count = (all.size() + kPiece - 1) / kPiece;
  // P2 numbers the pieces: 256 of 223 bytes is past the 64 KiB batch a session carries.
  if (count == 0 || count > 256)
    throw core::FormatError(core::ErrorCode::BadApdu, "a command sequence of 1..256 pieces");
  std::vector<core::CommandApdu> out;
  for (std::size_t i = 0; i < count; ++i) {
    core::CommandApdu c;
    c.cla = core::applet::kClaProprietary;
    c.ins = ins;
    const bool last = i + 1 == count;
    c.p1 = static_cast<std::uint8_t>(p1_base | (last ? core::applet::kStoreLastBlock : 0));
    c.p2 = static_cast<std::uint8_t>(i);
    const std::size_t from = i * kPiece, to = std::min(all.size(), from + kPiece);
    c.data.assign(all.begin() + static_cast<std::ptrdiff_t>(from),
                  all.begin() + static_cast<std::ptrdiff_t>(to));
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace

bool is_config_dgi(std::uint16_t dgi) noexcept { return (dgi & 0xFF00) == 0x0F00; }

std::vector<core::CommandApdu> store_item_commands(std::uint16_t dgi, const core::Bytes& value) {
  core::SecureBytes encoded;
  core::encode_dgi(encoded, dgi, value.data(), value.size());
  return pieces(kInsStoreData, core::applet::kStoreDgiFormat, encoded);
}

std::vector<core::CommandApdu> load_module_commands(const core::Bytes& module) {
  return pieces(kInsLoadModule, 0x00, core::SecureBytes(module.begin(), module.end()));
}

core::CommandApdu get_status_command() {
  core::CommandApdu c;
  c.cla = core::applet::kClaProprietary;
  c.ins = kInsGetStatus;
  c.le = 256;
  return c;
}

}  // namespace keyline::service
