// Fuzz target for a chip with a vendor identity (docs/channel.md): the input is a sequence of APDUs,
// each prefixed by a 1-byte length, run through one Session, so that PERFORM SECURITY OPERATION
// chains (certificates parsed from the input), MUTUAL AUTHENTICATE, secured commands (CLA bit 04)
// and GENERATE KEY meet whatever state the earlier APDUs left. Every answer must be a response APDU
// with a status word; nothing may throw.
#include <botan/auto_rng.h>
#include <botan/ecdsa.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>

#include "keyline/core/cert_profile.h"
#include "keyline/device/applet.h"
#include "keyline/device/log.h"

namespace {

keyline::device::Device& device() {
  static std::unique_ptr<keyline::device::Device> dev = [] {
    namespace fs = std::filesystem;
    using namespace keyline;
    device::set_quiet(true);
    const fs::path dir = fs::temp_directory_path() / ("keyline-fuzz-chip-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    Botan::AutoSeeded_RNG rng;
    Botan::ECDSA_PrivateKey key(rng, Botan::EC_Group("secp256r1"));
    std::ofstream(dir / "root.pem") << core::to_pem(
        core::make_root_certificate(key, "fuzz root", "fuzz", rng));
    const auto vendor = device::vendor_init(dir / "vendor", "fuzz vendor");
    std::set<std::string> taken;
    device::make_device(dir / "dev", dir / "root.pem", taken, &vendor);
    static const std::string cleanup_dir = dir.string();
    std::atexit([] { std::filesystem::remove_all(cleanup_dir); });
    return std::make_unique<device::Device>(device::Chip::load(dir / "dev"), device::DeviceOptions{});
  }();
  return *dev;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  keyline::device::Session session(device());
  std::size_t off = 0;
  while (off < size) {
    const std::size_t len = std::min<std::size_t>(data[off], size - off - 1);
    ++off;
    const auto response = session.process(data + off, len);
    if (response.size() < 2) std::abort();
    off += len;
  }
  return 0;
}
