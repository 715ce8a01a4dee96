// The identity certificate profile (DESIGN section 5) and its checks, shared by the station (issue),
// the device (boot), the public DB (publish) and recovery (verify before writing).
//  - subject serialNumber (2.5.4.5) = IMEI
//  - subjectAltName otherName id-on-hardwareModuleName (RFC 4108 section 5, 1.3.6.1.5.5.7.8.4):
//      HardwareModuleName ::= SEQUENCE { hwType OBJECT IDENTIFIER, hwSerialNum OCTET STRING }
//    with hwSerialNum = the 10 chip ID bytes and hwType = the manufacturer's OID (kDefaultHwType).
//  - notAfter 21991231235959Z (RFC 5280 4.1.2.5 allows GeneralizedTime; Botan 2 refuses 99991231235959Z)
//  - P-256 ECDSA key for identity certs; X25519 (keyUsage keyAgreement) for transport certs.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <botan/asn1_obj.h>
#include <botan/pkix_types.h>
#include <botan/x509cert.h>

#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"
#include "keyline/core/imei.h"

namespace keyline::core {

// keyline's default hwType: a private-enterprise style arc documented in docs/decisions.md.
// Manufacturers configure their own.
extern const char* const kDefaultHwType;  // "1.3.6.1.4.1.59999.1.1"
extern const char* const kNotAfter;       // "21991231235959Z"

// SubjectAltName carrying one otherName HardwareModuleName (Botan 2 cannot encode an otherName
// holding a SEQUENCE, so this extension writes the DER itself).
class HardwareModuleNameExtension final : public Botan::Certificate_Extension {
 public:
  HardwareModuleNameExtension() = default;
  HardwareModuleNameExtension(Botan::OID hw_type, const ChipId& chip_id)
      : m_hw_type(std::move(hw_type)), m_serial(chip_id.bytes().begin(), chip_id.bytes().end()) {}

  Botan::OID oid_of() const override { return static_oid(); }
  static Botan::OID static_oid() { return Botan::OID("2.5.29.17"); }
  Botan::Certificate_Extension* copy() const override { return new HardwareModuleNameExtension(*this); }
  std::string oid_name() const override { return "X509v3.SubjectAlternativeName"; }
  const Botan::OID& hw_type() const { return m_hw_type; }
  const Bytes& hw_serial() const { return m_serial; }

 private:
  bool should_encode() const override { return true; }
  std::vector<std::uint8_t> encode_inner() const override;
  void decode_inner(const std::vector<std::uint8_t>&) override;
  void contents_to(Botan::Data_Store&, Botan::Data_Store&) const override {}

  Botan::OID m_hw_type;
  Bytes m_serial;
};

// What an identity certificate says, read back from its DER.
struct IdentityFacts {
  Imei imei;
  ChipId chip_id;
  std::string hw_type;  // dotted OID
};

// Reads IMEI and chip ID from an identity certificate. Throws FormatError(BadCertificate).
IdentityFacts read_identity(const Botan::X509_Certificate& cert);

// Profile lint before signing (Boulder-style): IMEI Luhn, chip ID form, extensions present and
// critical where required, key type P-256 (identity) / X25519 (transport), validity. Throws
// Error(CertificateLint) naming the failed rule.
enum class CertKind { Identity, Transport };
void lint_certificate(const Botan::X509_Certificate& cert, CertKind kind);

// Verifies leaf -> intermediates -> one of the trust anchors (signatures, CA flags, key usage),
// ignoring time (device certificates do not expire; anchors carry 2199). Throws Error(ChainInvalid).
void verify_chain(const Botan::X509_Certificate& leaf,
                  const std::vector<Botan::X509_Certificate>& intermediates,
                  const std::vector<Botan::X509_Certificate>& trust_anchors);

// PEM/DER helpers.
std::vector<Botan::X509_Certificate> load_certificates_pem(const std::string& path);
std::string to_pem(const Botan::X509_Certificate& cert);

}  // namespace keyline::core
