// The source device's own KPS policy (D/secure/kps-policy, device-emu/src/kps_policy.cpp): what it
// allows, and that a missing file or a line that does not parse refuses everything.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "keyline/device/kps_agent.h"

using namespace keyline;
namespace fs = std::filesystem;

namespace {

struct PolicyDir {
  fs::path dir = fs::temp_directory_path() / ("kps-policy-" + std::to_string(::getpid()));
  PolicyDir() { fs::create_directories(dir / "secure"); }
  ~PolicyDir() { fs::remove_all(dir); }
  void write(const std::string& text) { std::ofstream(dir / "secure" / "kps-policy") << text; }
  bool allows(const std::string& target, const std::string& label) {
    return device::device_policy_allows(dir, core::ChipId::parse(target), label);
  }
};

const std::string kB = "4B4C0001AABBCCDD0022";
const std::string kC = "4B4C0001AABBCCDD0033";

}  // namespace

TEST_CASE("device policy: no file refuses every transfer") {
  PolicyDir p;
  CHECK_FALSE(p.allows(kB, "user-key"));
}

TEST_CASE("device policy: a target and a label glob") {
  PolicyDir p;
  p.write("# comment\n\nallow " + kB + " user-*   # B gets the user keys\nallow * wifi-?\n");
  CHECK(p.allows(kB, "user-key"));
  CHECK(p.allows(kB, "user-"));
  CHECK_FALSE(p.allows(kB, "other-key"));  // another label of the same source
  CHECK_FALSE(p.allows(kC, "user-key"));   // another target
  CHECK(p.allows(kC, "wifi-1"));
  CHECK_FALSE(p.allows(kC, "wifi-12"));
  CHECK_FALSE(p.allows(kC, "wifi-"));
}

TEST_CASE("device policy: a line that does not parse refuses everything") {
  PolicyDir p;
  const std::vector<std::string> bad_lines{"allow " + kB, "allow " + kB + " a b", "deny * *", "allow nochip *",
                                          "allow * bad/glob", "allow " + kB.substr(1) + " *"};
  for (const auto& bad : bad_lines) {
    INFO(bad);
    p.write("allow * *\n" + bad + "\n");
    CHECK_FALSE(p.allows(kB, "user-key"));
  }
  p.write("allow * *\n");
  CHECK(p.allows(kB, "anything"));
}

TEST_CASE("device policy: glob matching needs no backtracking blow-up") {
  PolicyDir p;
  p.write("allow * *a*a*a*a*a*a*a*a*b\n");
  CHECK_FALSE(p.allows(kB, std::string(60, 'a')));
  CHECK(p.allows(kB, std::string(60, 'a') + "b"));
}
