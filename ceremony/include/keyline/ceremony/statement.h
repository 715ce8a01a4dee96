// Custody statements (docs/ceremony.md "Custody statements"): what a station's custody operation
// (`keyline-station keys roll|mirror|export|import`, a line's failover) leaves for the ceremony log,
// signed by the station's TLS key on its token. `keyline-ceremony log import` checks one and appends it.
// The format is the station's signed text (docs/custody.md "Files"): the magic line
// keyline-custody-statement-v1, name=value lines (names [a-z0-9_]{1,32}, values printable ASCII, no name
// twice), signature= (base64 DER ECDSA P-256/SHA-256 over every byte before it), then the trailer
// certificate= (base64 of the station's PEM chain). At most 64 KiB.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <botan/x509cert.h>

#include "keyline/core/signed_text.h"

namespace keyline::ceremony {

// Read by core/signed_text.h; field() throws FormatError(StatementBadFile).
using CustodyStatement = core::SignedText;

// Throws core::FormatError(errc::StatementBadFile) naming what is wrong.
CustodyStatement parse_statement(const std::string& text);

// The station certificate that signed it, once: the chain in the trailer verifies to `root`, the leaf is
// of the station profile and names the statement's station_id, and the signature verifies under it.
// Throws core::Error(errc::StatementRefused) saying which check failed.
Botan::X509_Certificate check_statement(const CustodyStatement& st, const Botan::X509_Certificate& root);

// The members an import's outcome line carries, in this order (docs/ceremony.md "Custody statements").
const std::vector<std::string>& statement_members();

}  // namespace keyline::ceremony
