// The transparency log's key on the public DB's PKCS#11 token (docs/transparency.md, "The public
// DB's log"): `keyline-backupdb log init` makes it, `log key` prints its verifier key for recovery
// and monitors to pin, and serve signs checkpoints with it.
#pragma once

#include <memory>
#include <string>

#include "keyline/backupdb/config.h"
#include "keyline/core/token_note_signer.h"

namespace keyline::backupdb {

// Generates the Ed25519 key pair on the token (never extractable) and returns its vkey text
// ("<origin>+<key ID>+<base64>"). Throws ConfigError when a key of that label exists already.
std::string log_init(const LogSettings& settings);
// The vkey text of the existing key. Throws Pkcs11KeyNotFound.
std::string log_key(const LogSettings& settings);
// The checkpoint signer serve uses. Throws ConfigError for missing settings, Pkcs11Error.
std::shared_ptr<core::note::TokenNoteSigner> open_log_signer(const LogSettings& settings);

}  // namespace keyline::backupdb
