// Signed key=value text (docs/custody.md "Files", docs/ceremony.md "Custody statements"): a magic first
// line, `name=value` lines (the signed part), a `signature=` line (base64 DER ECDSA P-256/SHA-256 over
// every byte before it), then trailer lines (certificate, wrapped). Names [a-z0-9_]{1,32}, values
// printable ASCII, no name twice, at most 64 KiB. The station writes these files and reads its peers';
// the ceremony reads the station's custody statements and links no station code, so the one reader is
// here. Each part keeps its own typed error: it passes the code and wording its readers throw.
#pragma once

#include <map>
#include <string>

#include <botan/x509cert.h>

#include "keyline/core/bytes.h"
#include "keyline/core/error.h"

namespace keyline::core {

// What a part throws for a signed text that does not parse: FormatError(code, what + ": " + why).
struct SignedTextError {
  ErrorCode code{};
  std::string what;  // "custody file", "custody statement"
  [[noreturn]] void raise(const std::string& why) const;
};

struct SignedText {
  std::map<std::string, std::string> fields;   // the signed part
  std::string signed_part;                     // its exact bytes, magic line included
  Bytes signature;                             // decoded
  std::map<std::string, std::string> trailer;  // after the signature
  SignedTextError error;                       // the reader's, which field() throws too
  const std::string& field(const std::string& name) const;  // throws error when missing
};

// Throws error naming what is wrong.
SignedText parse_signed_text(const std::string& text, const std::string& magic, const SignedTextError& error);
// A base64 value (signature, trailer lines); throws error ("<what> is not base64").
Bytes decode_signed_text_base64(const std::string& text, const char* what, const SignedTextError& error);
// Whether the signature verifies over the signed part under the certificate's key.
bool signed_text_verifies(const SignedText& text, const Botan::X509_Certificate& cert);

}  // namespace keyline::core
