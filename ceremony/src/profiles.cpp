// CSR checks per profile (docs/ceremony.md, "Profiles"). A CSR is a request, not an instruction: the
// root takes its public key and the subject attributes the profile names; an extension, an attribute
// or a subject attribute the profile does not take is refused by name rather than dropped, so whoever
// made the CSR learns that the certificate would not say what they asked.
#include "keyline/ceremony/profiles.h"

#include <set>

#include <botan/oids.h>
#include <botan/x509_ext.h>
#include <botan/x509_key.h>

#include "keyline/ceremony/errors.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/utf8.h"

namespace keyline::ceremony {

namespace {

const Botan::OID kOidBasicConstraints("2.5.29.19");
const Botan::OID kOidKeyUsage("2.5.29.15");
const Botan::OID kOidEku("2.5.29.37");
const Botan::OID kOidCommonName("2.5.4.3");
const Botan::OID kOidOrganization("2.5.4.10");
const Botan::OID kOidUnit("2.5.4.11");

[[noreturn]] void refuse(Profile p, const std::string& why) {
  throw core::Error(errc::CsrRefused, "CSR refused under the " + profile_name(p) + " profile: " + why);
}

std::string oid_label(const Botan::OID& oid) {
  const auto name = Botan::OIDS::oid2str_or_empty(oid);
  return name.empty() ? oid.to_string() : name + " (" + oid.to_string() + ")";
}

Botan::Key_Constraints profile_usage(Profile p) {
  return profile_is_ca(p) ? Botan::Key_Constraints(Botan::KEY_CERT_SIGN | Botan::CRL_SIGN) : Botan::DIGITAL_SIGNATURE;
}

// Requested extensions are taken only when they ask for exactly what the profile issues anyway.
void check_extensions(const Botan::PKCS10_Request& req, Profile p) {
  const auto& ext = req.extensions();
  for (const auto& oid : ext.get_extension_oids()) {
    if (oid == kOidBasicConstraints) {
      if (req.is_CA() != profile_is_ca(p))
        refuse(p, std::string("basicConstraints asks for CA:") + (req.is_CA() ? "true" : "false") +
                      "; the profile issues CA:" + (profile_is_ca(p) ? "true" : "false"));
      if (profile_is_ca(p) && req.path_limit() != 0) refuse(p, "basicConstraints asks for a path length other than 0");
    } else if (oid == kOidKeyUsage) {
      if (req.constraints() != profile_usage(p)) refuse(p, "keyUsage differs from the profile's");
    } else if (oid == kOidEku) {
      if (req.ex_constraints() != profile_eku(p)) refuse(p, "extendedKeyUsage differs from the profile's");
    } else {
      refuse(p, "extension " + oid_label(oid) + " is not taken from a CSR");
    }
  }
  if (!req.challenge_password().empty()) refuse(p, "attribute challengePassword is not taken");
}

// One value of `oid` in the subject at most (exactly one when `required`); empty when absent.
std::string single(const Botan::X509_DN& dn, const Botan::OID& oid, bool required, Profile p) {
  std::vector<std::string> values;
  for (const auto& [o, v] : dn.dn_info())
    if (o == oid) values.push_back(v.value());
  if (values.size() > 1) refuse(p, "subject holds " + oid_label(oid) + " more than once");
  if (values.empty() && required) refuse(p, "subject has no " + oid_label(oid));
  return values.empty() ? std::string() : values.front();
}

// Subject values end up in terminals (log show, the officers' screens) and in certificates: valid
// UTF-8 a terminal shows as itself only, so no value can carry an escape sequence (C0, or C1 such as
// the 8-bit CSI U+009B), reorder what the officers read (bidi controls) or hide a second name behind a NUL.
bool printable(const std::string& v) { return core::utf8_all(v, core::is_terminal_safe); }

Botan::X509_DN check_subject(const Botan::X509_DN& dn, Profile p) {
  for (const auto& [oid, value] : dn.dn_info())
    if (!printable(value.value())) refuse(p, "subject attribute " + oid_label(oid) + " holds a control character, a bidirectional control or invalid UTF-8");
  const std::set<Botan::OID> allowed = p == Profile::Station ? std::set<Botan::OID>{kOidCommonName, kOidUnit}
                                                             : std::set<Botan::OID>{kOidCommonName, kOidOrganization};
  for (const auto& [oid, value] : dn.dn_info())
    if (!allowed.count(oid)) refuse(p, "subject attribute " + oid_label(oid) + " is not allowed");
  const std::string cn = single(dn, kOidCommonName, true, p);
  Botan::X509_DN out;
  if (p == Profile::Station) {
    if (!core::is_valid_station_id(cn)) refuse(p, "subject CN '" + cn + "' is not a station id");
    const std::string ou = single(dn, kOidUnit, false, p);
    if (!ou.empty() && ou != core::kStationUnit) refuse(p, "subject OU must be '" + std::string(core::kStationUnit) + "'");
    out.add_attribute("X520.OrganizationalUnit", core::kStationUnit);
  } else {
    if (cn.empty() || cn.size() > 64) refuse(p, "subject CN must be 1 to 64 characters");
    const std::string o = single(dn, kOidOrganization, false, p);
    if (!o.empty()) out.add_attribute("X520.Organization", o);
  }
  out.add_attribute("X520.CommonName", cn);
  return out;
}

}  // namespace

bool profile_is_ca(Profile p) { return p == Profile::DeviceCa || p == Profile::ServiceCa; }

std::vector<Botan::OID> profile_eku(Profile p) {
  if (p == Profile::Station) return {Botan::OID("1.3.6.1.5.5.7.3.2")};      // id-kp-clientAuth
  if (p == Profile::CodeSigning) return {Botan::OID("1.3.6.1.5.5.7.3.3")};  // id-kp-codeSigning
  return {};
}

Profile profile_from_name(const std::string& name) {
  if (name == "device-ca") return Profile::DeviceCa;
  if (name == "service-ca") return Profile::ServiceCa;
  if (name == "station") return Profile::Station;
  if (name == "code-signing") return Profile::CodeSigning;
  throw core::ConfigError(core::ErrorCode::Usage, "unknown profile '" + name + "'");
}

std::string profile_name(Profile p) {
  switch (p) {
    case Profile::DeviceCa: return "device-ca";
    case Profile::ServiceCa: return "service-ca";
    case Profile::Station: return "station";
    case Profile::CodeSigning: return "code-signing";
  }
  return "?";
}

long default_days(Profile p) { return max_days(p); }

// Nothing revokes a keyline certificate yet (docs/ceremony.md, "Profiles"), so its notAfter is what
// bounds a leaked key: a CA ten years, a station's TLS client key what core's station profile allows
// (kTlsValidityDays), a code-signing key one year.
long max_days(Profile p) {
  if (profile_is_ca(p)) return 3650;
  if (p == Profile::Station) return core::kTlsValidityDays;
  return 365;
}

Botan::X509_DN check_request(const Botan::PKCS10_Request& req, Profile p, const Botan::Public_Key& root_key) {
  if (req.raw_public_key() == Botan::X509::BER_encode(root_key)) refuse(p, "the key is the root's own key");
  check_extensions(req, p);
  return check_subject(req.subject_dn(), p);
}

}  // namespace keyline::ceremony
