// Ceremony error codes (range 7000-7999 of core/error.h). Stable: quoted in logs and exit messages.
#pragma once

#include "keyline/core/error.h"

namespace keyline::ceremony::errc {
constexpr auto RootExists = static_cast<core::ErrorCode>(7001);    // init-root on a ceremony that has a root
constexpr auto RootMissing = static_cast<core::ErrorCode>(7002);   // sign before init-root
constexpr auto RootMismatch = static_cast<core::ErrorCode>(7003);  // the token's root key is not root.pem's
constexpr auto CsrRefused = static_cast<core::ErrorCode>(7010);    // the CSR asks for what the profile forbids
constexpr auto LogInvalid = static_cast<core::ErrorCode>(7020);    // the ceremony log does not verify
constexpr auto LogWrite = static_cast<core::ErrorCode>(7021);      // a log line could not be made durable
constexpr auto DirUnsafe = static_cast<core::ErrorCode>(7030);     // the ceremony directory is not ours alone
constexpr auto Sandbox = static_cast<core::ErrorCode>(7040);       // the no-network filter could not be installed
constexpr auto StatementRefused = static_cast<core::ErrorCode>(7050);  // a custody statement that does not check
constexpr auto StatementBadFile = static_cast<core::ErrorCode>(7051);  // a custody statement that does not parse
}  // namespace keyline::ceremony::errc

namespace keyline::ceremony {
// The process exit code (docs/operations.md) for any error code, ceremony codes included.
int exit_code_for(core::ErrorCode code) noexcept;
}  // namespace keyline::ceremony
