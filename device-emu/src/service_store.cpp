#include "keyline/device/service_store.h"

#include <botan/hash.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "keyline/core/backup_package.h"
#include "keyline/core/data_package.h"
#include "keyline/core/dgi.h"
#include "keyline/core/flash_image.h"

namespace keyline::device {

namespace {

constexpr std::size_t kCommLen = 32;
constexpr std::uint32_t kMaxCounter = 0xFFFFFF;
constexpr std::size_t kMaxItemsFile = 256 * 1024;

// A secret file straight into SecureBytes (never a std::string); empty when it does not exist.
core::SecureBytes read_secret_file(const fs::path& path, std::size_t max) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  core::SecureBytes out = read_secret_fd(fd, max);
  if (out.size() > max) throw core::IoError(core::ErrorCode::Io, path.string() + " is larger than allowed");
  return out;
}

Botan::secure_vector<std::uint8_t> sha256(const core::Bytes& b) {
  return Botan::HashFunction::create_or_throw("SHA-256")->process(b);
}

}  // namespace

std::optional<CommKey> current_comm_key(const Chip& chip) {
  const ServicePaths sp{chip.paths().dir};
  const core::SecureBytes rotated = read_secret_file(sp.comm_key(), 1 + kCommLen);
  if (!rotated.empty()) {
    if (rotated.size() != 1 + kCommLen)
      throw core::Error(error::NoDevice, "secure/comm.key is not KVN || 32 bytes");
    return CommKey{rotated[0], core::SecureBytes(rotated.begin() + 1, rotated.end())};
  }
  const auto image = read_bytes(chip.paths().image());
  if (!image) return std::nullopt;
  chip.verify_image(*image);  // every boot check, as at boot
  const auto flash = core::FlashImage::decode(*image);
  const auto pkg = core::DataPackage::decode(chip.open(flash.backup));
  return CommKey{pkg.master_version, pkg.comm_key};
}

void store_comm_key(const fs::path& dir, const CommKey& key) {
  if (key.comm.size() != kCommLen) throw core::Error(error::NoDevice, "a communication key is 32 bytes");
  core::SecureBytes b;
  b.push_back(key.kvn);
  b.insert(b.end(), key.comm.begin(), key.comm.end());
  write_atomic(ServicePaths{dir}.comm_key(), b.data(), b.size(), std::nullopt, 0600, true);
}

std::uint32_t next_sequence_counter(const fs::path& dir) {
  const ServicePaths sp{dir};
  const auto b = read_bytes(sp.counter(), 8);
  std::uint32_t v = 0;
  if (b) {
    if (b->size() != 4) throw core::Error(error::NoDevice, "secure/scp03.ctr is not 4 bytes");
    v = (std::uint32_t{(*b)[0]} << 24) | (std::uint32_t{(*b)[1]} << 16) | (std::uint32_t{(*b)[2]} << 8) |
        (*b)[3];
  }
  if (v >= kMaxCounter) throw core::Error(error::NoDevice, "the SCP03 sequence counter has run out");
  ++v;
  const std::uint8_t out[4] = {static_cast<std::uint8_t>(v >> 24), static_cast<std::uint8_t>(v >> 16),
                               static_cast<std::uint8_t>(v >> 8), static_cast<std::uint8_t>(v)};
  // Durable before the answer: a restart never reuses a counter, so no card challenge repeats.
  write_atomic(sp.counter(), out, sizeof out, std::nullopt, 0600, true);
  return v;
}

std::map<std::uint16_t, core::Bytes> load_items(const fs::path& dir) {
  std::map<std::uint16_t, core::Bytes> out;
  const auto b = read_bytes(ServicePaths{dir}.items(), kMaxItemsFile);
  if (!b) return out;
  for (const auto& d : core::decode_dgis(b->data(), b->size()))
    out[d.tag] = core::Bytes(d.value.begin(), d.value.end());
  return out;
}

void apply_items(const fs::path& dir, const std::map<std::uint16_t, core::Bytes>& items) {
  auto all = load_items(dir);
  for (const auto& [tag, value] : items) all[tag] = value;
  std::vector<core::Dgi> dgis;
  for (const auto& [tag, value] : all) dgis.push_back({tag, core::SecureBytes(value.begin(), value.end())});
  const core::SecureBytes enc = core::encode_dgis(dgis);
  if (enc.size() > kMaxItemsFile) throw core::Error(error::NoDevice, "configuration items exceed the store");
  const ServicePaths sp{dir};
  fs::create_directories(sp.service());
  write_atomic(sp.items(), enc.data(), enc.size(), std::nullopt, 0644, true);
}

InstalledModules installed_modules(const Chip& chip) {
  InstalledModules out;
  const ServicePaths sp{chip.paths().dir};
  std::error_code ec;
  if (!fs::is_directory(sp.modules(), ec)) return out;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(sp.modules()))
    if (e.path().extension() == ".mod") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    try {
      const auto b = read_bytes(f, core::service::kMaxModuleBody * 2);
      auto m = core::service::parse_module(*b);
      bool trusted = false;
      for (const auto& root : chip.roots()) {
        try {
          core::service::verify_module(m, root);
          trusted = true;
          break;
        } catch (const core::Error&) {
        }
      }
      if (!trusted || f.stem().string() != m.name)
        throw core::Error(core::ErrorCode::ModuleNotTrusted, "refused");
      out.modules.push_back(std::move(m));
    } catch (const core::Error&) {
      out.rejected.push_back(f.filename().string());
    }
  }
  // By name, as GET STATUS lists them (file names sort "a-b.mod" before "a.mod").
  std::sort(out.modules.begin(), out.modules.end(),
            [](const core::service::Module& a, const core::service::Module& b) { return a.name < b.name; });
  return out;
}

ModuleRefusal install_module(const Chip& chip, const core::Bytes& module_bytes,
                             core::service::Module* installed) {
  core::service::Module m;
  try {
    m = core::service::parse_module(module_bytes);
  } catch (const core::FormatError&) {
    return ModuleRefusal::Malformed;
  }
  bool trusted = false;
  for (const auto& root : chip.roots()) {
    try {
      core::service::verify_module(m, root);
      trusted = true;
      break;
    } catch (const core::Error&) {
    }
  }
  if (!trusted) return ModuleRefusal::NotTrusted;
  // No downgrade and no re-install of the same version: recorded per module name.
  for (const auto& have : installed_modules(chip).modules)
    if (have.name == m.name && m.version <= have.version) return ModuleRefusal::Downgrade;
  const ServicePaths sp{chip.paths().dir};
  fs::create_directories(sp.modules());
  write_atomic(sp.module(m.name), module_bytes.data(), module_bytes.size(), std::nullopt, 0644, true);
  if (installed) *installed = std::move(m);
  return ModuleRefusal::None;
}

core::service::DeviceStatus service_status(const Chip& chip) {
  core::service::DeviceStatus s;
  s.imei = chip.imei() ? chip.imei()->str() : std::string(15, '0');
  s.lifecycle = static_cast<std::uint8_t>(chip.lifecycle());
  const auto key = current_comm_key(chip);
  s.kvn = key ? key->kvn : 0;
  for (const auto& m : installed_modules(chip).modules) s.modules.push_back({m.name, m.version});
  for (const auto& [tag, value] : load_items(chip.paths().dir)) {
    const auto d = sha256(value);
    s.items.push_back({tag, core::Bytes(d.begin(), d.end())});
  }
  return s;
}

}  // namespace keyline::device
