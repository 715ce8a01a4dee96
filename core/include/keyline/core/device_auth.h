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
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
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

// Remembered verified chains (the KPS keeps one per instance). A chain's verification — parsing, the
// leaf's signature under its Device CA, the path to the anchors, the identity facts — depends on nothing
// but the chain's DER and the anchors, so a success stands until the chain's earliest notAfter. The key
// is SHA-256 over the anchors' and the chain's DER, so another anchor set or a changed byte anywhere in
// the chain is a miss and takes the full path. The request signature is never remembered. Thread-safe;
// bounded: the least recently used entry goes first.
class ChainCache {
 public:
  struct Entry {
    ChipId chip_id;
    std::string imei;
    std::vector<Botan::X509_Certificate> chain;
    std::shared_ptr<const Botan::Public_Key> identity_key;
    std::int64_t not_after = 0;  // Unix s: the earliest notAfter of the chain; unused from then on
  };
  explicit ChainCache(std::size_t capacity = 4096);
  // The entry for key while now < its not_after (an expired entry is dropped), or null.
  std::shared_ptr<const Entry> find(const std::string& key, std::int64_t now);
  void put(const std::string& key, std::shared_ptr<const Entry> entry);
  std::size_t size() const;
  std::uint64_t hits() const;
  std::uint64_t misses() const;

 private:
  using Lru = std::list<std::pair<std::string, std::shared_ptr<const Entry>>>;
  mutable std::mutex m_mutex;
  std::size_t m_capacity;
  Lru m_lru;  // most recently used first
  std::unordered_map<std::string, Lru::iterator> m_index;
  std::uint64_t m_hits = 0;
  std::uint64_t m_misses = 0;
};

// header(name) returns the header's value or "" when absent. Throws Error(ChainInvalid) for a chain
// that does not verify, FormatError(BadCertificate) for missing or malformed headers or certificates,
// CryptoError(Crypto) for a bad signature or a timestamp further than max_skew from now. The messages
// say which check failed (they are safe to log, never echoed to the client verbatim). With a cache, a
// chain verified before (same DER, same anchors, before its notAfter) skips the chain checks; the
// timestamp, the nonce's form and the request signature are checked every time.
Verified verify_request(const std::function<std::string(const std::string&)>& header, const std::string& method,
                        const std::string& path, const std::string& body,
                        const std::vector<Botan::X509_Certificate>& anchors, std::int64_t now,
                        std::int64_t max_skew = kDefaultMaxSkewSeconds, ChainCache* cache = nullptr);

}  // namespace keyline::core::device_auth
