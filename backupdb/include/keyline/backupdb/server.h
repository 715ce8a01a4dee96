// The HTTP(S) server of docs/design.md section 7 (see docs/api.md).
#pragma once

#include "keyline/backupdb/config.h"

namespace keyline::backupdb {

// Validates the configuration, opens the listener and serves until SIGINT or SIGTERM.
// Returns 0 after a clean shutdown. Throws ConfigError / Error(errc::Tls) on unusable settings.
int serve(const Config& config);

}  // namespace keyline::backupdb
