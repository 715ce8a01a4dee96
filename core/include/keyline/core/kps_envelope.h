// KLKE: the source-signed sealed key of a KPS transfer (docs/kps.md "Source-authenticated transfers").
// Shared because the source device builds it, the KPS checks its outer fields, and the target opens it.
//
// Wire form (big-endian lengths), at most kMaxSize bytes:
//   "KLKE" || u8 version (1)
//   || u16 len || transfer id || u8 len || label || source chip (10) || target chip (10)   = the header
//   || u32 len || sealed            HPKE base mode (core/hpke.h) enc || ct, info "keyline/kps/v2",
//                                   aad = the header bytes above (magic and version included)
//   || u16 count || { u32 len || DER }*   source identity certificate first, then its issuers (Device CA)
//   || u16 len || signature          ECDSA P-256 / SHA-256, DER (RFC 3279 section 2.2.3), by the source's
//                                   identity key over every byte before this length
// The signature is the source's identity key rather than HPKE auth mode (docs/decisions.md): that key is
// already certified to the root with the source's chip ID, and the target already checks such chains.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <botan/pk_keys.h>
#include <botan/rng.h>
#include <botan/x509cert.h>

#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"

namespace keyline::core::kps_envelope {

constexpr std::uint8_t kVersion = 1;
constexpr const char* kHpkeInfo = "keyline/kps/v2";
constexpr std::size_t kMaxSize = 16 * 1024;
constexpr std::size_t kMaxTransferIdSize = 64;
constexpr std::size_t kMaxLabelSize = 64;
constexpr std::size_t kMaxCertificates = 4;

struct Header {
  std::string transfer_id;
  std::string label;
  ChipId source;
  ChipId target;
  bool operator==(const Header& o) const {
    return transfer_id == o.transfer_id && label == o.label && source == o.source && target == o.target;
  }
};

struct Envelope {
  Header header;
  Bytes sealed;                     // HPKE enc || ct
  std::vector<Bytes> certificates;  // DER, identity certificate first
  Bytes signature;                  // DER ECDSA
  Bytes signed_part;                // every byte before the signature length (set by parse and build)
};

// "KLKE" || version || the header fields: the HPKE aad. Throws FormatError(BadKeyEnvelope) when the id
// (1..64 bytes) or label (1..64 bytes) is out of range.
Bytes header_bytes(const Header& header);

// Signs a message with the source's identity key: returns DER ECDSA P-256 / SHA-256.
using IdentitySigner = std::function<Bytes(const Bytes& message)>;
IdentitySigner botan_identity_signer(const Botan::Private_Key& identity_key, Botan::RandomNumberGenerator& rng);

// Source side: seals key to the target's X25519 transport public key (32 bytes; the caller has verified
// its certificate to the ROM root and the target chip), then signs. chain_der: identity certificate
// first, then its issuers up to, not including, the root.
Bytes build(const Header& header, const Bytes& target_transport_public_key, const SecureBytes& key,
            const std::vector<Bytes>& chain_der, const IdentitySigner& sign);

// Strict parse of untrusted bytes: magic, version, every length in range, nothing after the signature,
// at most kMaxSize bytes, 1..kMaxCertificates certificates. Certificates are not decoded here. Throws
// FormatError(BadKeyEnvelope) saying which field is wrong.
Envelope parse(const std::uint8_t* data, std::size_t len);
inline Envelope parse(const Bytes& wire) { return parse(wire.data(), wire.size()); }

// The source's checks (the KPS runs them as a cheap sanity check, the target as the one that counts):
// the certificates decode, the chain verifies to one of anchors (core::verify_chain), the identity
// certificate's HardwareModuleName equals header.source, and the signature over signed_part verifies
// with its key. Throws FormatError(BadCertificate), Error(ChainInvalid) or CryptoError(Crypto).
void verify_source(const Envelope& envelope, const std::vector<Botan::X509_Certificate>& anchors);

// Target side: the header must equal expected (the transfer it asked for: id, label, source, its own
// chip) — CryptoError(Crypto) "envelope for another transfer" otherwise —, verify_source, then HPKE open
// with its transport secret key. Returns the key. Throws as verify_source, CryptoError(Crypto) when it
// does not open.
SecureBytes verify_and_open(const Envelope& envelope, const Header& expected,
                            const std::vector<Botan::X509_Certificate>& anchors,
                            const SecureBytes& transport_secret_key);

}  // namespace keyline::core::kps_envelope
