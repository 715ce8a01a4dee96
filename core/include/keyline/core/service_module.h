// A software module the device service server sends to a shipped device with LOAD MODULE (issue #16,
// docs/protocol.md "Service channel commands", docs/service.md). keyline-service signs it on a token
// with a manufacturer code-signing key; keyline-device verifies it against the root in its ROM before
// it stores it. One format for both, encoded and parsed here.
//
// Layout (all integers big-endian):
//   magic "KLM" 01                      4 bytes (format version 1)
//   name length                         1 byte, 1..64
//   name                                [a-z0-9._-], the module's identity on the device
//   version                             u32; the device refuses one <= the installed version
//   body length                         u32, at most kMaxModuleBody
//   body                                the module's bytes
//   signature                           64 bytes: ECDSA P-256 r || s (IEEE P1363, what PKCS#11 CKM_ECDSA
//                                       returns) over SHA-256(magic .. body)
//   certificate length                  u16, 1..kMaxModuleCertificate
//   certificate                         the code-signing certificate (DER): EKU exactly codeSigning,
//                                       chained to the manufacturer root (ceremony profile code-signing)
// Nothing may follow the certificate.
#pragma once

#include <botan/rng.h>
#include <botan/x509cert.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "keyline/core/bytes.h"

namespace keyline::core::service {

constexpr std::size_t kMaxModuleName = 64;
// A whole module, wrapped into LOAD MODULE pieces and hex-encoded, fits one 64 KiB batch of the
// service channel (docs/service.md): 16 KiB of body make about 40 KiB of hex.
constexpr std::size_t kMaxModuleBody = 16 * 1024;
constexpr std::size_t kMaxModuleCertificate = 2048;
constexpr std::size_t kModuleSignatureLen = 64;

struct Module {
  std::string name;
  std::uint32_t version = 0;
  Bytes body;
  Bytes signature;    // 64 bytes r || s
  Bytes certificate;  // DER
};

// The bytes the signature covers: magic || name length || name || version || body length || body.
// Throws FormatError(BadServiceModule) for a name or body outside the limits above.
Bytes module_signed_part(const std::string& name, std::uint32_t version, const Bytes& body);
// SHA-256 of module_signed_part: what a token signs with CKM_ECDSA.
Bytes module_digest(const std::string& name, std::uint32_t version, const Bytes& body);

// Throws FormatError(BadServiceModule) for a field outside the limits.
Bytes encode_module(const Module& m);
// Exact parse of the layout above. Throws FormatError(BadServiceModule); never anything else.
Module parse_module(const std::uint8_t* data, std::size_t len);
inline Module parse_module(const Bytes& b) { return parse_module(b.data(), b.size()); }

// The device's check before it stores a module: the certificate chains to `root` (RFC 5280 path
// validation, at `now`), is not a CA, carries extendedKeyUsage exactly id-kp-codeSigning and a P-256
// key, and the signature verifies over module_signed_part. Throws Error(ModuleNotTrusted).
void verify_module(const Module& m, const Botan::X509_Certificate& root);

// Software signing, for tests and tools without a token: the signature over module_signed_part with a
// P-256 private key (PKCS#8 PEM or DER in `pkcs8`).
Module sign_module(const std::string& name, std::uint32_t version, const Bytes& body,
                   const SecureBytes& pkcs8, const Bytes& certificate_der, Botan::RandomNumberGenerator& rng);

// --- GET STATUS under the service channel (80 F2 00 00, docs/protocol.md "Service channel commands") --
// The answer, TLVs in this order (1-byte tags, lengths one byte < 128 or 81 XX / 82 XX XX):
//   C0 IMEI (15 ASCII digits)   C1 lifecycle (1: 01 BLANK, 0F PERSONALIZED)   C2 KVN (1)
//   E1 { C4 name, C5 version u32 }     once per installed module, sorted by name
//   E2 { C6 DGI tag (2) || SHA-256 of the item's value (32) }   once per configuration item, by tag
struct ModuleVersion {
  std::string name;
  std::uint32_t version = 0;
};
struct ItemDigest {
  std::uint16_t tag = 0;
  Bytes sha256;  // 32 bytes
};
struct DeviceStatus {
  std::string imei;
  std::uint8_t lifecycle = 0;
  std::uint8_t kvn = 0;
  std::vector<ModuleVersion> modules;
  std::vector<ItemDigest> items;
};
Bytes encode_device_status(const DeviceStatus& s);
// Exact parse: the order above, names and tags strictly ascending (one encoding per status).
// Throws FormatError(BadServiceModule).
DeviceStatus parse_device_status(const std::uint8_t* data, std::size_t len);

}  // namespace keyline::core::service
