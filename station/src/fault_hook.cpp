#include "keyline/station/fault_hook.h"

#include <atomic>

namespace keyline::station {

namespace {
std::atomic<FaultHook> g_hook{nullptr};
}  // namespace

void install_fault_hook(FaultHook hook) noexcept { g_hook.store(hook); }

bool fault_hook_installed() noexcept { return g_hook.load() != nullptr; }

void fault_point(const std::string& step) {
  if (const FaultHook hook = g_hook.load()) hook(step);
}

}  // namespace keyline::station
