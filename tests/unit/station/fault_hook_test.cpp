// The crash tests' fault points: the library has no hook of its own (the operator's keyline-station
// never crashes on purpose, whatever its environment says); a hook the test program installs sees
// every fault point.
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "keyline/station/fault_hook.h"

namespace st = keyline::station;

namespace {
std::vector<std::string> g_seen;
void record(const std::string& step) { g_seen.push_back(step); }
}  // namespace

TEST_CASE("fault hook: none by default, KEYLINE_STATION_CRASH_AT does not arm the library, an installed hook sees each point") {
  ::setenv("KEYLINE_STATION_CRASH_AT", "claim", 1);
  CHECK_FALSE(st::fault_hook_installed());
  st::fault_point("claim");  // would abort this test if the library read the variable
  st::install_fault_hook(&record);
  CHECK(st::fault_hook_installed());
  st::fault_point("claim");
  st::fault_point("drain");
  CHECK(g_seen == std::vector<std::string>{"claim", "drain"});
  st::install_fault_hook(nullptr);
  st::fault_point("store");
  CHECK(g_seen.size() == 2);
  ::unsetenv("KEYLINE_STATION_CRASH_AT");
}
