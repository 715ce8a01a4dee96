// A public backup DB record (docs/design.md section 7) and the checks that the public DB (on publish) and
// recovery (before writing) must agree on.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <botan/x509cert.h>

#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"
#include "keyline/core/imei.h"

namespace keyline::core {

struct Record {
  ChipId chip_id;
  Imei imei = Imei::parse("490154203237518");
  Bytes backup;                    // the backup package
  // DER: identity certificate first, then the Device CA (not the root), then the transport certificate
  // (docs/decisions.md, "The transport certificate in the public record"; records of before have none).
  std::vector<Bytes> certificates;

  // SHA-256 over a canonical encoding ("KLRC" || version 1 || chip ID || IMEI ASCII || u32 len backup ||
  // backup || u16 count || {u32 len || DER}*), upper-case hex. Equal content <=> equal hash.
  std::string hash() const;

  // JSON form used on the wire: {"chip_id","imei","backup" (base64),"certificates" ([PEM]),
  // "record_hash"} (+ "published_at" when read from the DB). Throws FormatError(BadRecord).
  std::string to_json(const std::string& published_at = {}) const;
  // The same with record_hash given by a caller that has hash() already (it is not checked).
  std::string to_json_hashed(const std::string& record_hash, const std::string& published_at = {}) const;
  // Strict on what it reads: chip_id as 20 upper-case hex digits, Luhn-valid imei, canonical base64
  // backup, 1..16 PEM CERTIFICATE strings, and record_hash (optional) equal to hash(). Unknown
  // members are ignored (forward compatibility); published_at, when present, must be a string.
  // Nesting deeper than 8 and texts over 4 MiB are refused. Throws FormatError(BadRecord).
  // When `hash` is given it receives hash() of the result: the record_hash check computes it anyway,
  // so a caller that needs it (the public DB) does not hash the record a second time.
  static Record from_json(const std::string& json, std::string* hash = nullptr);
};

// Full validation: identity chain to one of the anchors, the certificate's HardwareModuleName equals
// chip_id, its serialNumber equals imei (Luhn-valid), the backup header names chip_id.
// Checks in this order and throws for the first that fails:
//   FormatError(BadRecord)         no certificates
//   FormatError(BadCertificate)    a certificate is not DER X.509
//   FormatError(BadRecord)         not a shape the station publishes: [identity], [identity, Device CA]
//                                  or [identity, Device CA, transport] (more than 3, the second not the
//                                  CA named as the identity's issuer, the third a CA certificate)
//   Error(ChainInvalid)            "chain does not lead to a trusted root: ..." (the identity certificate
//                                  issued by the second certificate, or by an anchor when alone)
//   FormatError(BadRecord)         the second certificate's key does not verify the identity certificate
//   FormatError(BadRecord)         the identity certificate is not of the identity profile: an ECDSA
//                                  P-256 key, keyUsage digitalSignature without keyAgreement, not a CA
//   FormatError(BadCertificate)    the identity facts cannot be read (read_identity)
//   FormatError(BadRecord)         "certificate chip ID X differs from record chip ID Y",
//                                  "certificate IMEI X differs from record IMEI Y"
//   FormatError(BadBackupPackage)  header does not parse, or "backup package names chip X, record names chip Y"
//   FormatError(BadTransportCertificate)  when the record has a transport certificate (the third):
//                                  check_transport_certificate's errors, with the second as device_ca
// The backup is not opened: only the device holding the chip key can do that.
void validate_record(const Record& record, const std::vector<Botan::X509_Certificate>& trust_anchors);

// The checks validate_record makes after the chain, on its verified leaf: the identity profile, the identity facts, the
// chip ID and IMEI comparisons, the backup header (the last three errors above). For a caller that
// verified the chain its own way (the public DB's remembered Device CAs).
void check_record_facts(const Record& record, const Botan::X509_Certificate& leaf);

// The record's transport certificate (X25519, keyUsage keyAgreement: a third party seals messages to
// the device with it, core/hpke.h): the first certificate after the identity certificate that is not a
// CA certificate. The station publishes it third, after the Device CA; a record without one (published
// before, or a chain of CA certificates only) gives nullopt. Not checked here: use it from a record
// that passed validate_record, which checks it. Throws FormatError(BadCertificate) when a certificate
// after the first is not DER X.509, FormatError(BadTransportCertificate) when there are two candidates.
std::optional<Botan::X509_Certificate> transport_certificate(const Record& record);

// The transport certificate's profile against the record and the Device CA that issued the record's
// identity certificate (the caller verified that chain). Throws, for the first that fails:
//   FormatError(BadCertificate)           the identity certificate is not DER X.509
//   FormatError(BadCertificate)           a certificate after the first is not DER X.509
//   FormatError(BadTransportCertificate)  "record: transport certificate " and: "is missing", "is not the
//     only end-entity certificate ...", "issuer differs from the identity certificate's", "is not signed
//     by the Device CA", "key is not X25519", "keyUsage is not exactly keyAgreement", "is a CA
//     certificate", "names no chip ID and IMEI", "does not decode", "chip ID X differs from record chip ID Y"
//     (HardwareModuleName, RFC 4108 section 5), "IMEI X differs from record IMEI Y", "is not valid now"
//     (notAfter passed, or notBefore more than a day ahead: the station's clock set it)
void check_transport_certificate(const Record& record, const Botan::X509_Certificate& device_ca);
// The same on certificates the caller parsed already (identity = certificates[0], transport = what
// transport_certificate gave): for the public DB's remembered-CA path, which verifies the signature
// with its kept verifier for device_ca (`signed_by`: true when device_ca's key verifies the
// certificate; empty: device_ca's key parsed and used here). The issuer DN is compared here either way.
using SignedByDeviceCa = std::function<bool(const Botan::X509_Certificate&)>;
void check_transport_certificate(const Record& record, const Botan::X509_Certificate& identity,
                                 const Botan::X509_Certificate& transport, const Botan::X509_Certificate& device_ca,
                                 const SignedByDeviceCa& signed_by = nullptr);

}  // namespace keyline::core
