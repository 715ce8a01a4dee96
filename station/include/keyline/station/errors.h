// Station error codes (range 4000-4999 of core/error.h). Stable: quoted in logs and exit messages.
#pragma once

#include "keyline/core/error.h"

namespace keyline::station::errc {
constexpr auto PoolEmpty = static_cast<core::ErrorCode>(4001);          // no IMEI (or key) left to claim
constexpr auto DeviceRefused = static_cast<core::ErrorCode>(4010);      // a status word other than 9000
constexpr auto AlreadyPersonalized = static_cast<core::ErrorCode>(4011);
constexpr auto BackupMismatch = static_cast<core::ErrorCode>(4012);     // backup header or drill digest wrong
// A stored device key does not unwrap for its row, or does not give the stored public half: nothing
// is certified; a pool row is quarantined, a journal row voided.
constexpr auto KeyMismatch = static_cast<core::ErrorCode>(4013);
constexpr auto PublishRejected = static_cast<core::ErrorCode>(4020);    // public DB answered 4xx
constexpr auto PublishPending = static_cast<core::ErrorCode>(4021);     // public DB unreachable: in the outbox
constexpr auto KeysExist = static_cast<core::ErrorCode>(4030);          // keys init on an initialised token
constexpr auto KeysMissing = static_cast<core::ErrorCode>(4031);
// The PKI directory (or a directory above it, or a file in it) may be changed by another user: nothing
// in it is trusted or written (docs/station.md, "Keys").
constexpr auto PkiUnsafe = static_cast<core::ErrorCode>(4032);
// `keys install-cert`: a certificate not for the token's key, not from the given root or of another
// profile than its key's role: nothing is installed.
constexpr auto CertRefused = static_cast<core::ErrorCode>(4033);
constexpr auto JournalConflict = static_cast<core::ErrorCode>(4040);    // the chip is being handled elsewhere
}  // namespace keyline::station::errc
