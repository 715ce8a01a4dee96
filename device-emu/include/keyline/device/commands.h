// The commands of keyline-device; main.cpp only parses flags into these.
#pragma once

#include <string>

#include "keyline/device/server.h"

namespace keyline::device {

struct ServeConfig {
  std::string dir;    // one device
  std::string fleet;  // or every dev-* device below this directory
  std::string listen = "127.0.0.1:0";  // HOST:PORT (fleet: first port, one port per device)
  std::string vpcd;   // HOST:PORT of pcscd's vpcd driver instead of listening
  std::string delays; // preset: "none" or "realistic" (10 / 50 / 300 ms)
  unsigned idle_timeout_ms = 30000;
  std::size_t max_connections = ServerOptions{}.max_connections;
  std::size_t max_connections_per_device = ServerOptions{}.max_connections_per_device;
  std::size_t memory_budget_mib = ServerOptions{}.memory_budget >> 20;
  DeviceOptions device;
};

// vendor: a chip vendor directory (vendor-init), or empty for chips without a vendor identity.
int cmd_make(const std::string& dir, std::size_t count, const std::string& rom_ca, bool fleet,
             const std::string& vendor = {});
// Makes the emulated chip vendor's CA in `dir`; prints the certificate's path.
int cmd_vendor_init(const std::string& dir, const std::string& name);
// Runs until SIGINT/SIGTERM. Prints "listening HOST:PORT CHIPID DIR" per device on stdout.
int cmd_serve(ServeConfig config);
int cmd_boot(const std::string& dir);
int cmd_status(const std::string& dir);
int cmd_wipe_flash(const std::string& dir);
int cmd_corrupt_flash(const std::string& dir);

}  // namespace keyline::device
