#include "keyline/device/commands.h"

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <iostream>

#include "keyline/core/device_link.h"
#include "keyline/core/error.h"
#include "keyline/device/log.h"
#include "keyline/device/service_store.h"

namespace keyline::device {

namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_signal(int) { g_stop = true; }

void install_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

}  // namespace

int cmd_make(const std::string& dir, std::size_t count, const std::string& rom_ca, bool fleet,
             const std::string& vendor_dir) {
  std::optional<ChipVendor> vendor;
  if (!vendor_dir.empty()) vendor = ChipVendor::load(vendor_dir);
  const ChipVendor* v = vendor ? &*vendor : nullptr;
  if (!fleet) {
    std::set<std::string> taken;
    const auto id = make_device(dir, rom_ca, taken, v);
    ::sync();
    std::cout << id.str() << " " << dir << "\n";
    return core::exit_code::ok;
  }
  const auto ids = make_fleet(dir, count, rom_ca, v);
  const auto dirs = list_fleet(dir);
  for (const auto& d : dirs) std::cout << Chip::load(d).chip_id().str() << " " << d.string() << "\n";
  std::cerr << "made " << ids.size() << " devices in " << dir << "\n";
  return core::exit_code::ok;
}

int cmd_vendor_init(const std::string& dir, const std::string& name) {
  vendor_init(dir, name);
  std::cout << (fs::path(dir) / "vendor.crt").string() << "\n";
  return core::exit_code::ok;
}

int cmd_serve(ServeConfig config) {
  if (config.dir.empty() == config.fleet.empty())
    throw core::ConfigError(core::ErrorCode::Usage, "give exactly one of --dir and --fleet");
  if (config.delays == "realistic") {
    config.device.faults.delay_id_ms = 10;
    config.device.faults.delay_store_ms = 50;
    config.device.faults.delay_flash_ms = 300;
  } else if (!config.delays.empty() && config.delays != "none") {
    throw core::ConfigError(core::ErrorCode::Usage, "--delays takes none or realistic");
  }
  if (config.device.faults.fail_rate < 0 || config.device.faults.fail_rate > 1)
    throw core::ConfigError(core::ErrorCode::Usage, "--fail-rate must be between 0 and 1");
  std::vector<fs::path> dirs;
  if (!config.dir.empty()) {
    dirs.push_back(config.dir);
  } else {
    dirs = list_fleet(config.fleet);
    if (dirs.empty()) throw core::ConfigError(core::ErrorCode::Config, "no device in fleet " + config.fleet);
  }
  install_signals();

  if (!config.vpcd.empty()) {
    const auto [host, port] = core::DeviceLink::parse_endpoint(config.vpcd);
    if (dirs.size() != 1) throw core::ConfigError(core::ErrorCode::Usage, "--vpcd serves one device (--dir)");
    Device device(Chip::load(dirs[0]), config.device);
    std::cout << "vpcd " << host << ":" << port << " " << device.chip().chip_id().str() << " " << dirs[0].string()
              << std::endl;
    serve_vpcd(device, host, port, g_stop);
    return core::exit_code::ok;
  }

  const auto [host, port] = core::DeviceLink::parse_endpoint(config.listen, true);
  ServerOptions options;
  options.host = host;
  options.base_port = port;
  options.idle_timeout = std::chrono::milliseconds(config.idle_timeout_ms);
  if (config.max_connections == 0 || config.max_connections_per_device == 0 || config.memory_budget_mib == 0)
    throw core::ConfigError(core::ErrorCode::Usage, "connection limits and the memory budget must be at least 1");
  options.max_connections = config.max_connections;
  options.max_connections_per_device = config.max_connections_per_device;
  options.memory_budget = config.memory_budget_mib << 20;
  options.device = config.device;
  raise_open_files_limit();
  Server server(dirs, options);
  server.start();
  const auto ports = server.ports();
  for (std::size_t i = 0; i < ports.size(); ++i)
    std::cout << "listening " << host << ":" << ports[i] << " " << server.device(i).chip().chip_id().str() << " "
              << dirs[i].string() << "\n";
  std::cout << std::flush;
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server.stop();
  return core::exit_code::ok;
}

int cmd_boot(const std::string& dir) {
  const auto id = boot_offline(dir);
  std::cout << "imei " << id.imei.str() << "\n"
            << "chip_id " << id.chip_id.str() << "\n"
            << "identity_key_sha256 " << id.identity_fingerprint << "\n"
            << "transport_key_sha256 " << id.transport_fingerprint << "\n"
            << "package_sha256 " << core::to_hex(id.package_digest) << "\n";
  // What the service channel applied (docs/service.md "The device side"): re-verified at every boot.
  const auto chip = Chip::load(dir);
  const auto status = service_status(chip);
  std::cout << "kvn " << int{status.kvn} << "\n";
  const auto modules = installed_modules(chip);
  for (const auto& m : modules.modules) std::cout << "module " << m.name << " " << m.version << "\n";
  for (const auto& r : modules.rejected) std::cout << "module_rejected " << r << "\n";
  for (const auto& i : status.items)
    std::cout << "item " << core::to_hex(core::Bytes{static_cast<std::uint8_t>(i.tag >> 8), static_cast<std::uint8_t>(i.tag)})
              << " " << core::to_hex(i.sha256) << "\n";
  return core::exit_code::ok;
}

int cmd_status(const std::string& dir) {
  std::cout << status_text(dir);
  return core::exit_code::ok;
}

int cmd_wipe_flash(const std::string& dir) {
  wipe_flash(dir);
  std::cout << "flash wiped: " << dir << "\n";
  return core::exit_code::ok;
}

int cmd_corrupt_flash(const std::string& dir) {
  corrupt_flash(dir);
  std::cout << "flash corrupted (one bit flipped): " << dir << "\n";
  return core::exit_code::ok;
}

}  // namespace keyline::device
