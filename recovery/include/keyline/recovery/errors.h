// keyline-recovery's error codes (range 5000-5999 of core/error.h) and the exit codes the tool
// promises in --help and docs/recovery.md. Codes are part of the user contract: never renumbered.
#pragma once

#include "keyline/core/error.h"

namespace keyline::recovery {

namespace errc {
// The public DB has no record for this chip (HTTP 404): exit 7.
constexpr auto NoRecord = static_cast<core::ErrorCode>(5001);
// The record, or the bundle, does not verify (chain, chip ID, IMEI, backup header, backup does not
// open on this chip): exit 3, and nothing was written.
constexpr auto VerificationFailed = static_cast<core::ErrorCode>(5002);
// The public DB cannot be reached after the retries, or answers with a server error: exit 4.
constexpr auto DbUnavailable = static_cast<core::ErrorCode>(5003);
// The device cannot be reached over the device link: exit 4.
constexpr auto DeviceUnreachable = static_cast<core::ErrorCode>(5004);
// The device answered but refused a command (UPDATE BINARY, BOOT STAGED); it keeps its previous image: exit 5.
constexpr auto DeviceRefused = static_cast<core::ErrorCode>(5005);
// The offline bundle cannot be read or does not parse: exit 3, nothing written.
constexpr auto BadBundle = static_cast<core::ErrorCode>(5006);
// The public DB answered something other than a record or 404 (4xx other than 404): exit 5.
constexpr auto DbRefused = static_cast<core::ErrorCode>(5007);
// The device booted the image but reports an identity other than the record's: exit 1.
constexpr auto IdentityMismatch = static_cast<core::ErrorCode>(5008);
// The record is not proved in the transparency log: the checkpoint is not signed by the pinned log
// key, the inclusion proof does not verify for the leaf computed from the record, or the log's
// answers do not parse (docs/recovery.md section 7): exit 3, nothing written.
constexpr auto LogNotVerified = static_cast<core::ErrorCode>(5009);
// The log's checkpoint does not extend the one this tool saw last (smaller tree, another root at the
// same size, or a consistency proof that fails): someone is shown another tree. Exit 5, nothing written.
constexpr auto LogFork = static_cast<core::ErrorCode>(5010);
// The record is published but not yet in a checkpoint (integration runs every few seconds): exit 4.
constexpr auto LogNotIntegrated = static_cast<core::ErrorCode>(5011);
// The log state file cannot be read or does not parse: exit 2 (a local file to fix or remove).
constexpr auto LogStateBad = static_cast<core::ErrorCode>(5012);
// The checkpoint lacks the --witnesses N valid cosignatures by the pinned --witness-key witnesses
// (docs/transparency.md, "Witness"): exit 3, nothing written.
constexpr auto LogNotWitnessed = static_cast<core::ErrorCode>(5013);
}  // namespace errc

// Exit codes of keyline-recovery. 0-5 keep the meaning shared by every keyline program
// (core::exit_code); 6 stays reserved for HSM problems there, so "no record" takes 7.
namespace exit_code {
constexpr int ok = 0;
constexpr int failure = 1;
constexpr int usage = 2;
constexpr int verification_failed = 3;  // nothing was written
constexpr int unavailable = 4;          // public DB or device cannot be reached
constexpr int device_refused = 5;       // the device kept its previous state
constexpr int log_fork = 5;             // the log forked from the one seen before; nothing written
constexpr int no_record = 7;            // the public DB has no record for this chip
}  // namespace exit_code

// Text for --help (one line per exit code).
extern const char* const kExitCodeHelp;

// Maps a typed error to the exit code above.
int exit_code_for(const core::Error& e) noexcept;

}  // namespace keyline::recovery
