// What the root signs (docs/ceremony.md, "Profiles"): from a CSR the root takes the public key and the
// subject attributes the profile allows, nothing else; everything else in the CSR is refused by name.
#pragma once

#include <string>
#include <vector>

#include <botan/pk_keys.h>
#include <botan/pkcs10.h>
#include <botan/rng.h>
#include <botan/x509_dn.h>
#include <botan/x509cert.h>

namespace keyline::ceremony {

enum class Profile { DeviceCa, ServiceCa, Station, CodeSigning };

// "device-ca" -> Profile::DeviceCa ... Throws ConfigError(Usage) for any other name.
Profile profile_from_name(const std::string& name);
std::string profile_name(Profile p);
// CA:true (device-ca, service-ca), and the exact extendedKeyUsage each profile issues (empty for CAs).
bool profile_is_ca(Profile p);
std::vector<Botan::OID> profile_eku(Profile p);
// Days of validity when `sign` is not given --days: the profile's maximum.
long default_days(Profile p);
// The longest validity the profile issues (3650 CA, 730 station, 365 code-signing); lint_issued
// refuses a draft that lasts longer.
long max_days(Profile p);

// The root's own certificate: self-signed, basicConstraints CA with pathLenConstraint 1 (critical: root ->
// Device/service CA (pathLen 0) -> leaf), keyUsage keyCertSign|cRLSign (critical), SKI; notAfter now + days.
Botan::X509_Certificate make_root(const Botan::Private_Key& root_key, const std::string& common_name,
                                  const std::string& organization, long days, Botan::RandomNumberGenerator& rng);

// The subject the certificate will carry, built from the CSR's subject under the profile's rules.
// Throws core::Error(errc::CsrRefused) naming the first attribute, extension or attribute value the
// profile does not take (extensions, a challengePassword, a subject attribute, a key that is the root's).
Botan::X509_DN check_request(const Botan::PKCS10_Request& req, Profile p, const Botan::Public_Key& root_key);

// Lint of a CA or code-signing certificate draft, and for every profile the rules tied to the root:
// issuer = root subject, AKI = root SKI, validity inside the root's. Station drafts also pass
// core::lint_station_certificate. Throws core::Error(CertificateLint) naming the rule.
void lint_issued(const Botan::X509_Certificate& draft, Profile p, const Botan::X509_Certificate& root);

// Issues the certificate: draft (same TBS, signed by a throw-away key), lint_issued, then the root key
// signs. Random 127-bit serial (RFC 5280 section 4.1.2.2). notAfter is now + days; with clamp_to_root
// (the profile's default validity) it ends with the root's instead of failing the lint when later.
Botan::X509_Certificate issue(const Botan::X509_Certificate& root, const Botan::Private_Key& root_key,
                              const Botan::PKCS10_Request& req, const Botan::X509_DN& subject, Profile p, long days,
                              bool clamp_to_root, Botan::RandomNumberGenerator& rng);

}  // namespace keyline::ceremony
