// Fault points for the crash tests, in one place for the line and the single-device path.
#pragma once

#include <string>

namespace keyline::station {

// The library calls fault_point(step) where a crash test may stop the station: each personalization
// step (step_name) and the line's "drain" (the public DB accepted a record, its outbox row is not
// marked yet). The library itself installs nothing and reads no option or environment variable for
// it, so in the operator's keyline-station every fault point is a no-op. Only the test program
// keyline-station-faulty (tests/support/station_faulty_main.cpp, never installed) installs a hook
// (docs/line.md, "Crash tests").
using FaultHook = void (*)(const std::string& step);

// Installs the hook (nullptr removes it). Call before any line thread starts.
void install_fault_hook(FaultHook hook) noexcept;
bool fault_hook_installed() noexcept;
// Calls the installed hook, if any. Safe from any thread.
void fault_point(const std::string& step);

}  // namespace keyline::station
