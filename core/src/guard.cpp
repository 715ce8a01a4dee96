#include "keyline/core/guard.h"

#include <cstdio>
#include <exception>

#include "keyline/core/error.h"
#include "keyline/core/json_log.h"
#include "keyline/core/log_format.h"

namespace keyline::core {

int run_guarded(const std::string& program, const std::function<int()>& body) noexcept {
  try {
    log::set_program(program);  // the "program" of every JSON log line (docs/operations.md, "Logs")
    return body();
  } catch (const Error& e) {
    log::say(program + ": error " + std::to_string(e.numeric()) + ": " + e.what());
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    log::say(program + ": error: " + e.what());
    return exit_code::failure;
  } catch (...) {
    log::say(program + ": error: unknown failure");
    return exit_code::failure;
  }
}

}  // namespace keyline::core
