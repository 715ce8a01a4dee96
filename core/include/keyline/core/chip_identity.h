// A chip's vendor identity and its key attestation statements (docs/channel.md): what the chip
// vendor puts into each chip at fab (keyline-device vendor-init / make --vendor), what the station
// checks before it claims anything for a chip, and what GENERATE KEY answers.
//
// Each chip holds two P-256 keys with certificates from its vendor CA, both naming the chip ID as
// HardwareModuleName (RFC 4108 section 5, as in the identity certificate, docs/design.md section 5):
//   SD key (SCP11 SK.SD.ECKA)  keyUsage keyAgreement only; GET DATA BF21 (KID 11, KVN 01)
//   attestation key            keyUsage digitalSignature only, policy kAttestationPolicyOid;
//                              signs attestation statements and nothing else; GET DATA DF21
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "keyline/core/apdu.h"
#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"

namespace Botan {
class X509_Certificate;
class Private_Key;
class Public_Key;
class RandomNumberGenerator;
}  // namespace Botan

namespace keyline::core::chip {

// keyline policy OIDs under the arc of docs/design.md section 5 (the station policy is 2.1).
constexpr const char* kAttestationPolicyOid = "1.3.6.1.4.1.59999.2.2";  // chip attestation key
constexpr const char* kOcePolicyOid = "1.3.6.1.4.1.59999.2.3";          // station SCP11 OCE key

// GET DATA DF21: the attestation certificate (DER), plain (it is public).
constexpr std::uint16_t kAttestationCertTag = 0xDF21;

// --- vendor CA and chip certificates (the emulated vendor, keyline-device) ----------------------
// The vendor CA: self-signed, CA, pathlen 0, keyCertSign|cRLSign, valid 20 years.
Botan::X509_Certificate make_vendor_ca(const Botan::Private_Key& key, const std::string& vendor_name,
                                       Botan::RandomNumberGenerator& rng);
enum class ChipKeyRole { Sd, Attestation };
// An end-entity certificate from the vendor CA for one chip key: subject CN "<vendor> chip <ID>",
// SAN HardwareModuleName(hw_type, chip ID), keyUsage as above, no EKU.
Bytes issue_chip_certificate(const Botan::X509_Certificate& vendor_ca, const Botan::Private_Key& vendor_key,
                             const Botan::Public_Key& chip_key, ChipKeyRole role, const ChipId& chip,
                             const std::string& hw_type, Botan::RandomNumberGenerator& rng);

// --- the station's check (before any claim) -----------------------------------------------------
// vendor CA certificates, PEM, one file (--chip-vendors FILE). Throws ConfigError(Config) for a file
// that does not parse, holds no certificate or a certificate that is not a CA.
std::vector<Botan::X509_Certificate> load_vendor_list(const std::string& path);

struct VerifiedChip {
  Bytes sd_public_point;           // 65-byte uncompressed P-256 point, for SCP11 ShSss
  Bytes attestation_public_point;  // for verify_statement
  std::string vendor;              // the vendor CA's subject CN
  std::string vendor_ca_sha256;    // hex, of the vendor CA certificate DER
};
// `store` is parse_certificate_store's answer (the SD certificate last, intermediates before it),
// `attestation_der` GET DATA DF21's. Both must chain (Botan path validation, at `now`) to one of
// `vendors`, carry the key usage of their role, and name exactly `cplc_chip` as HardwareModuleName.
// Throws Error(ChipNotGenuine) or Error(ChipIdMismatch); the message names the chip, never a key.
VerifiedChip verify_chip(const std::vector<Bytes>& store, const Bytes& attestation_der,
                         const std::vector<Botan::X509_Certificate>& vendors, const ChipId& cplc_chip);

// --- GENERATE KEY (docs/channel.md): 80 47 P1 00 40 challenge(32) || context(32) 00 --------------
enum class KeyKind : std::uint8_t { Identity = 0x01, Transport = 0x02 };  // P1; P-256 ECDSA / X25519
constexpr std::uint8_t kInsGenerateKey = 0x47;  // ISO 7816-8 GENERATE ASYMMETRIC KEY PAIR's INS
constexpr std::size_t kChallengeSize = 32;
CommandApdu generate_key_command(KeyKind kind, const Bytes& challenge, const Bytes& context_hash);

// SHA-256 over "keyline attest context v1" || chip ID (10) || IMEI (15 ASCII) || u8 len || station id
// || u64 claim id (big-endian): binds a statement to this claim of this chip on this station.
Bytes context_hash(const ChipId& chip, const std::string& imei, const std::string& station_id, std::int64_t claim_id);

struct Statement {
  ChipId chip;
  KeyKind kind = KeyKind::Identity;
  std::uint8_t usage = 0;  // 01 = sign (identity), 02 = key agreement (transport)
  Bytes public_key;        // 65-byte P-256 point or 32-byte X25519 key
  Bytes challenge;         // 32
  Bytes context;           // 32
  std::uint32_t counter = 0;  // the chip's attestation counter: grows by one per statement, never resets
};
// "KLAT" || version 01 || chip ID || kind || usage || u8 key length || key || challenge || context ||
// u32 counter. Exact layout; throws FormatError(BadAttestation) for anything else.
Bytes encode_statement(const Statement& s);
Statement parse_statement(const std::uint8_t* data, std::size_t len);

// GENERATE KEY's answer data: u16 statement length || statement || ECDSA-SHA256 DER signature.
struct SignedStatement {
  Bytes statement;  // encode_statement bytes, as signed
  Bytes signature;
};
Bytes encode_signed_statement(const SignedStatement& s);
SignedStatement parse_signed_statement(const std::uint8_t* data, std::size_t len);
// The device's side: signs with its attestation key.
SignedStatement sign_statement(const Statement& s, const Botan::Private_Key& attestation_key,
                               Botan::RandomNumberGenerator& rng);

// The station's check: signature by the chip's attestation key, then chip, kind, usage, challenge,
// context and counter > last_counter. Throws Error(BadAttestation) for a signature that fails or bytes
// that do not parse, Error(AttestationMismatch) for a valid statement that answers something else.
Statement verify_statement(const SignedStatement& signed_statement, const VerifiedChip& chip, const ChipId& chip_id,
                           KeyKind kind, const Bytes& challenge, const Bytes& context, std::uint32_t last_counter);

}  // namespace keyline::core::chip
