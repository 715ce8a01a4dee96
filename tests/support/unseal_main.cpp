// keyline-test-unseal DEVICE_DIR: the secrets a personalized emulated device holds -- the DGIs 8101
// (identity private key, PKCS#8 DER), 8102 (transport X25519 scalar) and 8103 (communication key) --
// for the log scans of the e2e tests (tests/e2e/station/personalize_e2e.sh). Test-only, never
// installed. It opens the sealed backup in the device's flash with the chip key from the emulator's
// secure storage, as the chip itself does at boot: the test plays the chip fab, which made that key,
// and reads nothing the station or a log could hand it. Output: "<dgi> hex|HEX|b64 <value>" lines.
#include <cctype>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include "keyline/core/backup_package.h"
#include "keyline/core/bytes.h"
#include "keyline/core/data_package.h"
#include "keyline/core/error.h"
#include "keyline/core/flash_image.h"
#include "keyline/core/guard.h"

namespace {

using namespace keyline::core;

template <class Buffer>
Buffer read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(ErrorCode::Io, "cannot read " + path);
  return Buffer((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void print(const char* dgi, const SecureBytes& v) {
  const std::string upper = to_hex(v.data(), v.size());
  std::string lower = upper;
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::printf("%s hex %s\n%s HEX %s\n%s b64 %s\n", dgi, lower.c_str(), dgi, upper.c_str(), dgi,
              to_base64(v.data(), v.size()).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: keyline-test-unseal DEVICE_DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  return run_guarded("keyline-test-unseal", [&] {
    const auto chip_key = read_all<SecureBytes>(dir + "/secure/chip.key");
    const auto image = FlashImage::decode(read_all<Bytes>(dir + "/flash/image.bin"));
    const auto header = parse_backup_header(image.backup);
    const auto package = DataPackage::decode(open_backup(chip_key, header.chip_id, image.backup));
    print("8101", package.identity_key);
    print("8102", package.transport_key);
    print("8103", package.comm_key);
    return 0;
  });
}
