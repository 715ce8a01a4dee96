// The identity certificate profile (docs/design.md section 5) and its checks, shared by the station (issue),
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
#include <botan/pk_keys.h>
#include <botan/pkix_types.h>
#include <botan/rng.h>
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

  // Decodes a subjectAltName extension value (the contents of extnValue) that holds exactly one
  // GeneralName, an otherName HardwareModuleName. Throws FormatError(BadCertificate).
  static HardwareModuleNameExtension from_der(const std::vector<std::uint8_t>& extn_value);

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
// A CA certificate's signature found valid under an issuer is remembered by the two certificates'
// exact DER (a few dozen pairs per process), so a Device CA is checked against its root once, not
// for every device; every leaf's signature is verified each time.
void verify_chain(const Botan::X509_Certificate& leaf,
                  const std::vector<Botan::X509_Certificate>& intermediates,
                  const std::vector<Botan::X509_Certificate>& trust_anchors);

// --- issuing (station, keys init, tests) ---------------------------------------------------------
// Every helper signs with SHA-256 through Botan::choose_sig_format, so `signer_key` may be an
// in-process key or a token key (keyline::core::Pkcs11EcdsaPrivateKey). Serial numbers are 127-bit
// random (RFC 5280 section 4.1.2.2: positive, at most 20 octets). notAfter is kNotAfter unless
// stated otherwise.

// Self-signed trust anchor: basicConstraints CA (critical), keyUsage keyCertSign|cRLSign (critical), SKI.
Botan::X509_Certificate make_root_certificate(const Botan::Private_Key& key, const std::string& common_name,
                                              const std::string& organization, Botan::RandomNumberGenerator& rng);

// Subordinate CA (Manufacturer Device CA, service CA): as the root plus AKI and a path length limit.
Botan::X509_Certificate make_ca_certificate(const Botan::X509_Certificate& issuer_cert,
                                            const Botan::Private_Key& issuer_key,
                                            const Botan::Public_Key& ca_key, const std::string& common_name,
                                            const std::string& organization, std::size_t path_limit,
                                            Botan::RandomNumberGenerator& rng);

// Identity certificate (docs/design.md section 5): subject serialNumber=<IMEI>, SAN HardwareModuleName(chip ID),
// keyUsage digitalSignature (critical), basicConstraints CA:false (critical), SKI/AKI, notBefore now,
// notAfter kNotAfter. The to-be-signed certificate is linted first (lint_certificate on a draft with
// the same contents and a placeholder signature), so a profile violation never reaches the CA key.
// Throws Error(CertificateLint).
Botan::X509_Certificate issue_identity_certificate(const Botan::X509_Certificate& ca_cert,
                                                   const Botan::Private_Key& ca_key,
                                                   const Botan::Public_Key& device_key, const Imei& imei,
                                                   const ChipId& chip_id, const std::string& hw_type,
                                                   Botan::RandomNumberGenerator& rng);

// The same as DER, without parsing the signed certificate back (what the station sends and stores).
Bytes issue_identity_certificate_der(const Botan::X509_Certificate& ca_cert, const Botan::Private_Key& ca_key,
                                     const Botan::Public_Key& device_key, const Imei& imei, const ChipId& chip_id,
                                     const std::string& hw_type, Botan::RandomNumberGenerator& rng);

// Transport certificate: as the identity certificate, but an X25519 key (Botan::Curve25519_PublicKey,
// SPKI OID 1.3.101.110, RFC 8410) and keyUsage keyAgreement (critical).
Botan::X509_Certificate issue_transport_certificate(const Botan::X509_Certificate& ca_cert,
                                                    const Botan::Private_Key& ca_key,
                                                    const Botan::Public_Key& x25519_key, const Imei& imei,
                                                    const ChipId& chip_id, const std::string& hw_type,
                                                    Botan::RandomNumberGenerator& rng);
Bytes issue_transport_certificate_der(const Botan::X509_Certificate& ca_cert, const Botan::Private_Key& ca_key,
                                      const Botan::Public_Key& x25519_key, const Imei& imei, const ChipId& chip_id,
                                      const std::string& hw_type, Botan::RandomNumberGenerator& rng);

// TLS end-entity certificates of the service CA (docs/decisions.md, "Station certificate profile").
// Both: P-256 key, keyUsage digitalSignature (critical), basicConstraints CA:false (critical), SKI/AKI,
// ecdsa-with-SHA256, notBefore now, notAfter now + kTlsValidity. The draft is linted before the CA key
// signs (lint_server_certificate / lint_station_certificate). Throws Error(CertificateLint).
//  Server: subject CN, extendedKeyUsage exactly serverAuth, SAN with every name (a dotted IPv4 literal
//          becomes iPAddress, anything else must be a valid DNS host name and becomes dNSName), no
//          certificatePolicies: a server certificate can never pass as a station's.
//  Client: the station profile — subject OU=kStationUnit, CN=<station id> (common_name, which must pass
//          is_valid_station_id), extendedKeyUsage exactly clientAuth, certificatePolicies exactly
//          kStationPolicy; `names`, when given, become SAN dNSNames. Issued for stations only.
enum class TlsRole { Server, Client };
Botan::X509_Certificate issue_tls_certificate(const Botan::X509_Certificate& ca_cert,
                                              const Botan::Private_Key& ca_key,
                                              const Botan::Public_Key& subject_key, const std::string& common_name,
                                              const std::vector<std::string>& names, TlsRole role,
                                              Botan::RandomNumberGenerator& rng);
// The station's client certificate (TlsRole::Client without SAN).
Botan::X509_Certificate issue_station_certificate(const Botan::X509_Certificate& ca_cert,
                                                  const Botan::Private_Key& ca_key,
                                                  const Botan::Public_Key& station_key, const std::string& station_id,
                                                  Botan::RandomNumberGenerator& rng);

// --- the station certificate profile (who may publish to the public DB) ------------------------
// keyline's station certificate policy, under the keyline arc of kDefaultHwType (docs/decisions.md).
extern const char* const kStationPolicy;  // "1.3.6.1.4.1.59999.2.1"
// The subject organizationalUnitName of every station certificate.
extern const char* const kStationUnit;    // "keyline station"
// Lifetime of the TLS certificates (station and servers): there is no revocation, so a leaked
// certificate is bounded by its notAfter; `keys init` renews a certificate with less than 30 days left.
constexpr long kTlsValidityDays = 730;

// The station's --station-id rule: 1 to 64 of letters, digits, '-', '_', '.'.
bool is_valid_station_id(const std::string& id);
// RFC 1123 section 2.1 host name: labels of 1..63 letters, digits and '-' (not first or last),
// at most 253 characters, no trailing dot, and not all digits and dots (that is an IP address).
bool is_valid_dns_name(const std::string& name);
// A dotted-quad IPv4 literal (inet_pton). Botan 2's SAN encoder knows no IPv6 iPAddress.
bool is_ipv4_literal(const std::string& name);

// The station profile, without validity period and signature (the caller checks those): v3,
// basicConstraints CA:false (critical), keyUsage exactly digitalSignature (critical),
// extendedKeyUsage exactly clientAuth (serverAuth refused), certificatePolicies exactly
// kStationPolicy, no extension beyond these, SKI, AKI and SAN, subject exactly one OU=kStationUnit and
// one CN that passes is_valid_station_id, P-256 ECDSA key, ecdsa-with-SHA256. Returns the station id.
// Throws FormatError(BadCertificate) naming the failed rule.
std::string read_station_id(const Botan::X509_Certificate& cert);
// Lint before signing a station certificate: read_station_id's rules plus a sane validity period
// (notBefore not in the future, notAfter after it). Throws Error(CertificateLint).
void lint_station_certificate(const Botan::X509_Certificate& cert);
// Lint before signing a server certificate: v3, CA:false, keyUsage exactly digitalSignature,
// extendedKeyUsage exactly serverAuth, no certificatePolicies, a subject CN and not the station OU,
// SAN of valid DNS names / IPv4 addresses (at least one), SKI/AKI, P-256, ecdsa-with-SHA256, a sane
// validity period. Throws Error(CertificateLint).
void lint_server_certificate(const Botan::X509_Certificate& cert);

// PEM/DER helpers.
// All certificates in a PEM file, in order. Throws IoError(Io) when unreadable, FormatError(BadCertificate)
// when a block does not parse or the file holds none.
std::vector<Botan::X509_Certificate> load_certificates_pem(const std::string& path);
// The same from PEM text in memory.
std::vector<Botan::X509_Certificate> parse_certificates_pem(const std::string& pem);
std::string to_pem(const Botan::X509_Certificate& cert);

}  // namespace keyline::core
