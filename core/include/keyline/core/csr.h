// Certificate signing requests (PKCS #10, RFC 2986): what a station token's key asks the offline root
// for (`keys init` writes them, `keyline-ceremony sign` reads them; docs/ceremony.md).
#pragma once

#include <string>

#include <botan/pk_keys.h>
#include <botan/pkcs10.h>
#include <botan/rng.h>
#include <botan/x509_dn.h>

#include "keyline/core/bytes.h"

namespace keyline::core {

// A CSR signed (SHA-256) by `key`, which may be a token key (Pkcs11EcdsaPrivateKey): subject `subject`,
// no extensions and no attributes, since the ceremony's profile decides every extension. PEM text.
std::string make_csr_pem(const Botan::Private_Key& key, const Botan::X509_DN& subject,
                         Botan::RandomNumberGenerator& rng);

// A CSR from PEM ("CERTIFICATE REQUEST") or DER bytes, its self-signature verified (RFC 2986 section 3:
// the signature proves possession of the private key). Throws FormatError(BadCertificate) when it
// does not parse, is not P-256 ECDSA-with-SHA256 or its signature does not verify.
Botan::PKCS10_Request parse_csr(const Bytes& pem_or_der);

}  // namespace keyline::core
