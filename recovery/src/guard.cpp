#include <cstdio>
#include <exception>

#include "keyline/core/log_format.h"
#include "keyline/recovery/errors.h"
#include "keyline/recovery/recovery.h"

namespace keyline::recovery {

const char* const kExitCodeHelp =
    "Exit codes:\n"
    "  0  done (restored, or verified on --dry-run, or bundle written)\n"
    "  1  other failure (the message says which)\n"
    "  2  usage: bad or missing flags, unreadable --trust/--ca file\n"
    "  3  verification failed: chain, chip ID, IMEI, backup package or bundle, or the record is not proved in the\n"
    "     transparency log (5009); nothing was written\n"
    "  4  the public DB (after retries) or the device cannot be reached; over PC/SC also pcscd not running (1421),\n"
    "     no reader matches --reader (1422), no card or a mute one (1423), the reader or card gone (1424, 1425);\n"
    "     the record is not yet in a checkpoint (5011): try again in a few seconds\n"
    "  5  the device refused the image; it keeps its previous state; or the log forked (5010): its checkpoint does\n"
    "     not extend the one seen before (--log-state); nothing was written\n"
    "  7  no record for this chip in the public DB (HTTP 404)";

int exit_code_for(const core::Error& e) noexcept {
  const auto c = e.code();
  if (c == errc::NoRecord) return exit_code::no_record;
  if (c == errc::VerificationFailed || c == errc::BadBundle || c == errc::LogNotVerified ||
      c == errc::LogNotWitnessed)
    return exit_code::verification_failed;
  if (c == errc::LogFork) return exit_code::log_fork;
  if (c == errc::LogNotIntegrated) return exit_code::unavailable;
  if (c == errc::LogStateBad) return exit_code::usage;
  if (c == errc::DbUnavailable || c == errc::DeviceUnreachable) return exit_code::unavailable;
  if (c == errc::DeviceRefused || c == errc::DbRefused) return exit_code::device_refused;
  if (c == errc::IdentityMismatch) return exit_code::failure;
  // Core codes keep the shared meaning (core::exit_code_for): Config/Usage 2, Network 4, formats 3.
  const int shared = core::exit_code_for(c);
  return shared == core::exit_code::hsm ? exit_code::failure : shared;
}

int run_guarded(const std::function<int()>& body) noexcept {
  try {
    return body();
  } catch (const core::Error& e) {
    const int code = exit_code_for(e);
    const bool verify = e.code() == errc::VerificationFailed;
    core::log::say("keyline-recovery: error " + std::to_string(e.numeric()) + ": " + (verify ? "verification failed: " : "") + e.what());
    if (e.code() == errc::VerificationFailed || e.code() == errc::BadBundle || e.code() == errc::LogNotVerified ||
        e.code() == errc::LogFork || e.code() == errc::LogNotIntegrated || e.code() == errc::LogNotWitnessed)
      core::log::say("keyline-recovery: nothing was written to the device");
    return code;
  } catch (const std::exception& e) {
    core::log::say(std::string("keyline-recovery: error: ") + e.what());
    return exit_code::failure;
  } catch (...) {
    core::log::say("keyline-recovery: error: unknown failure");
    return exit_code::failure;
  }
}

}  // namespace keyline::recovery
