// The one catch at a program's boundary: runs the body, prints a one-line reason on failure
// ("keyline-<prog>: error 1150: backup package does not open") and returns an exit code.
#pragma once

#include <functional>
#include <string>

namespace keyline::core {

int run_guarded(const std::string& program, const std::function<int()>& body) noexcept;

}  // namespace keyline::core
