// The applet commands keyline-service sends under the channel (docs/protocol.md "Service channel
// commands", docs/service.md). Plain here (CLA 80); SecureMessaging::wrap_command makes them CLA 84.
#pragma once

#include <cstdint>
#include <vector>

#include "keyline/core/apdu.h"
#include "keyline/core/bytes.h"

namespace keyline::service {

constexpr std::uint8_t kInsStoreData = 0xE2;
constexpr std::uint8_t kInsLoadModule = 0xE8;
constexpr std::uint8_t kInsPutKey = 0xD8;
constexpr std::uint8_t kInsGetStatus = 0xF2;

// A configuration item is one DGI 0Fxx; the service refuses other tags (0F00..0FFF are the
// configuration range of docs/protocol.md).
bool is_config_dgi(std::uint16_t dgi) noexcept;

// STORE DATA blocks (GP Card Specification v2.3 section 11.11): P1 b4 DGI format, b8 on the last
// block, P2 the block number; each piece at most core::scp11::kMaxPlainPiece so that it fits once wrapped.
std::vector<core::CommandApdu> store_item_commands(std::uint16_t dgi, const core::Bytes& value);
// LOAD MODULE (80 E8): the encoded module in pieces, P1 80 on the last, P2 the piece number.
std::vector<core::CommandApdu> load_module_commands(const core::Bytes& module);
// GET STATUS (80 F2 00 00, Le 00): the proprietary TLV answer.
core::CommandApdu get_status_command();

}  // namespace keyline::service
