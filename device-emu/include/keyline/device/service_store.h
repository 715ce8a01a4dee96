// What the device service channel changes on a device, kept durably (docs/service.md "The device
// side"). Beside the files of chip.h:
//   secure/scp03.ctr          SCP03 sequence counter (u32 BE), 0600, stepped durably before each
//                             INITIALIZE UPDATE answer (Amendment D section 6.2.2.1)
//   secure/comm.key           after a PUT KEY: KVN (1) || communication key (32), 0600; it replaces
//                             DGI 8103 of the data package from then on
//   flash/service/items.bin   configuration items (DGIs 0F01..0FFF) applied under the channel
//   flash/service/modules/<name>.mod  each installed software module as received (core/service_module.h)
// None of these is in the sealed backup: a backup restores the device as the station made it, and the
// service server applies its items and modules again (docs/service.md, the owner's choice).
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "keyline/core/bytes.h"
#include "keyline/core/service_module.h"
#include "keyline/device/chip.h"

namespace keyline::device {

struct ServicePaths {
  fs::path dir;
  fs::path counter() const { return dir / "secure" / "scp03.ctr"; }
  fs::path comm_key() const { return dir / "secure" / "comm.key"; }
  fs::path service() const { return dir / "flash" / "service"; }
  fs::path items() const { return service() / "items.bin"; }
  fs::path modules() const { return service() / "modules"; }
  fs::path module(const std::string& name) const { return modules() / (name + ".mod"); }
};

// The key the channel opens with: KVN and the 32-byte communication key.
struct CommKey {
  std::uint8_t kvn = 0;
  core::SecureBytes comm;
};
// secure/comm.key when a PUT KEY wrote one, else DGI 8103 of the verified flash image with the
// package header's master version as KVN. std::nullopt for a device with nothing in flash.
std::optional<CommKey> current_comm_key(const Chip& chip);
// Writes secure/comm.key durably (write_atomic, 0600).
void store_comm_key(const fs::path& dir, const CommKey& key);

// Steps secure/scp03.ctr and makes it durable before returning the new value. Throws
// Error(NoDevice) when the counter has reached 2^24 - 1 (three bytes on the wire).
std::uint32_t next_sequence_counter(const fs::path& dir);

// Items applied so far, by tag.
std::map<std::uint16_t, core::Bytes> load_items(const fs::path& dir);
// Merges `items` into flash/service/items.bin (one durable write).
void apply_items(const fs::path& dir, const std::map<std::uint16_t, core::Bytes>& items);

// Installed modules, each re-verified against the ROM roots (a module file changed in flash is
// skipped and named in `rejected`).
struct InstalledModules {
  std::vector<core::service::Module> modules;  // sorted by name
  std::vector<std::string> rejected;
};
InstalledModules installed_modules(const Chip& chip);
// Why LOAD MODULE refuses a module (docs/protocol.md): its status word.
enum class ModuleRefusal { None, Malformed, NotTrusted, Downgrade };
// Parses, verifies to the ROM root and checks the version against the installed one, then stores the
// module durably. Returns the refusal (nothing stored) or None.
ModuleRefusal install_module(const Chip& chip, const core::Bytes& module_bytes,
                             core::service::Module* installed);

// GET STATUS: what the service channel reads back.
core::service::DeviceStatus service_status(const Chip& chip);

}  // namespace keyline::device
