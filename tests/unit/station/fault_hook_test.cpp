// The crash tests' fault hook: which values arm it, which are refused (in the default build, which
// has fault hooks; a -DKEYLINE_FAULT_HOOKS=OFF build refuses every value and registers no e2e tests).
#include <doctest/doctest.h>

#include <cstdlib>

#include "keyline/core/error.h"
#include "keyline/station/fault_hook.h"

using keyline::station::FaultHook;

TEST_CASE("KEYLINE_STATION_CRASH_AT: unset or empty leaves the hook unarmed, step[:N] arms it, a bad N is refused") {
  ::unsetenv("KEYLINE_STATION_CRASH_AT");
  CHECK_FALSE(FaultHook::from_env().armed());
  ::setenv("KEYLINE_STATION_CRASH_AT", "", 1);
  CHECK_FALSE(FaultHook::from_env().armed());
  ::setenv("KEYLINE_STATION_CRASH_AT", "claim", 1);
  const auto h = FaultHook::from_env();
  CHECK(h.armed());
  h.at("store");  // another step: nothing happens
  ::setenv("KEYLINE_STATION_CRASH_AT", "claim:3", 1);
  const auto third = FaultHook::from_env();
  third.at("claim");
  third.at("claim");  // the first two passes do not abort
  CHECK(third.armed());
  for (const char* bad : {"claim:0", "claim:-1", "claim:x", "claim:2x"}) {
    ::setenv("KEYLINE_STATION_CRASH_AT", bad, 1);
    CHECK_THROWS_AS(FaultHook::from_env(), keyline::core::ConfigError);
  }
  ::unsetenv("KEYLINE_STATION_CRASH_AT");
}
