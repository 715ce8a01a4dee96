#include "keyline/core/guard.h"

#include <cstdio>
#include <exception>

#include "keyline/core/error.h"
#include "keyline/core/json_log.h"

namespace keyline::core {

int run_guarded(const std::string& program, const std::function<int()>& body) noexcept {
  try {
    log::set_program(program);  // the "program" of every JSON log line (docs/operations.md, "Logs")
    return body();
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: error %d: %s\n", program.c_str(), e.numeric(), e.what());
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", program.c_str(), e.what());
    return exit_code::failure;
  } catch (...) {
    std::fprintf(stderr, "%s: error: unknown failure\n", program.c_str());
    return exit_code::failure;
  }
}

}  // namespace keyline::core
