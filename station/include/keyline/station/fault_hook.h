// The crash tests' fault hook, in one place for the line and the single-device path.
#pragma once

#include <atomic>
#include <memory>
#include <cstdlib>
#include <optional>
#include <string>

namespace keyline::station {

// KEYLINE_STATION_CRASH_AT=<step>[:N] aborts the process (like kill -9: no clean-up, no flush) the
// N-th time <step> is reached: a personalization step (step_name) or the line's "drain" (the public DB
// accepted a record, its outbox row is not marked yet). Compiled in only with KEYLINE_FAULT_HOOKS
// (CMake option, on by default for the test suite). A production build (-DKEYLINE_FAULT_HOOKS=OFF)
// refuses the variable with a configuration error instead of ignoring it, so that nobody takes a run
// of such a build for a crash test.
class FaultHook {
 public:
  // Reads KEYLINE_STATION_CRASH_AT; throws core::ConfigError(Config) when it is set in a build
  // without fault hooks, or when N is not a positive number.
  static FaultHook from_env();

  bool armed() const noexcept { return !m_step.empty(); }
  // Aborts on the N-th call with the armed step's name. Safe from any thread.
  void at(const std::string& step) const {
    if (!m_step.empty() && step == m_step && m_seen->fetch_add(1) + 1 == m_nth) std::abort();
  }

 private:
  std::string m_step;
  long m_nth = 1;
  std::shared_ptr<std::atomic<long>> m_seen = std::make_shared<std::atomic<long>>(0);
};

}  // namespace keyline::station
