// Device request signatures: how a personalized device proves to a service server (the KPS) which chip
// it is, without TLS client certificates. Shared because the device signs and the KPS verifies.
//
// Each request carries four headers (docs/kps.md "Device authentication"):
//   Keyline-Certificates  base64(DER) of the identity certificate, then its issuers up to, not including,
//                         the root, comma-separated
//   Keyline-Timestamp     Unix seconds (decimal)
//   Keyline-Nonce         32 hex digits, fresh per request (the server refuses a nonce it has seen)
//   Keyline-Signature     base64 of ECDSA P-256 / SHA-256 (DER SEQUENCE {r, s}, RFC 3279 section 2.2.3)
//                         with the identity key over the string to sign:
//     "keyline-device-auth-v1\n" METHOD "\n" PATH-AND-QUERY "\n" hex(SHA-256(body)) "\n" TIMESTAMP "\n" NONCE
// The server verifies the chain to its trust anchors (core::verify_chain) and takes the chip ID from the
// identity certificate's HardwareModuleName, so the chip ID is never a claim the client makes by itself.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <botan/pk_keys.h>
#include <botan/rng.h>
#include <botan/x509cert.h>

#include "keyline/core/bytes.h"
#include "keyline/core/cert_profile.h"

namespace keyline::core::device_auth {

constexpr const char* kCertificatesHeader = "Keyline-Certificates";
constexpr const char* kTimestampHeader = "Keyline-Timestamp";
constexpr const char* kNonceHeader = "Keyline-Nonce";
constexpr const char* kSignatureHeader = "Keyline-Signature";
constexpr std::int64_t kDefaultMaxSkewSeconds = 300;

std::string string_to_sign(const std::string& method, const std::string& path, const std::string& body,
                           std::int64_t timestamp, const std::string& nonce);

// The four headers for one request. chain_der: identity certificate first, then its issuers.
std::map<std::string, std::string> sign_request(const Botan::Private_Key& identity_key,
                                                const std::vector<Bytes>& chain_der, const std::string& method,
                                                const std::string& path, const std::string& body,
                                                std::int64_t now, Botan::RandomNumberGenerator& rng);

struct Verified {
  ChipId chip_id;
  std::string imei;
  std::vector<Botan::X509_Certificate> chain;  // identity certificate first
  std::string nonce;
  std::int64_t timestamp = 0;
};

// header(name) returns the header's value or "" when absent. Throws Error(ChainInvalid) for a chain
// that does not verify, FormatError(BadCertificate) for missing or malformed headers or certificates,
// CryptoError(Crypto) for a bad signature or a timestamp further than max_skew from now. The messages
// say which check failed (they are safe to log, never echoed to the client verbatim).
Verified verify_request(const std::function<std::string(const std::string&)>& header, const std::string& method,
                        const std::string& path, const std::string& body,
                        const std::vector<Botan::X509_Certificate>& anchors, std::int64_t now,
                        std::int64_t max_skew = kDefaultMaxSkewSeconds);

}  // namespace keyline::core::device_auth
