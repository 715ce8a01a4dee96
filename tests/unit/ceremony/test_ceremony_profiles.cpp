// Profile checks on CSRs made here with Botan: what each profile issues, and what it refuses by name.
#include <doctest/doctest.h>

#include <chrono>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/rsa.h>
#include <botan/x509_ext.h>

#include "keyline/ceremony/errors.h"
#include "keyline/ceremony/profiles.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/csr.h"

using namespace keyline;
using namespace keyline::ceremony;

namespace {

Botan::AutoSeeded_RNG& rng() {
  static Botan::AutoSeeded_RNG r;
  return r;
}

struct Fixture {
  Botan::ECDSA_PrivateKey root_key{rng(), Botan::EC_Group("secp256r1")};
  Botan::X509_Certificate root = make_root(root_key, "Test Root", "keyline test", 3650, rng());
  Botan::ECDSA_PrivateKey subject_key{rng(), Botan::EC_Group("secp256r1")};
};

Botan::X509_DN dn(std::initializer_list<std::pair<const char*, const char*>> attrs) {
  Botan::X509_DN d;
  for (const auto& [k, v] : attrs) d.add_attribute(k, v);
  return d;
}

Botan::PKCS10_Request csr(const Botan::Private_Key& key, const Botan::X509_DN& subject,
                          const Botan::Extensions& ext = Botan::Extensions()) {
  const auto pem = Botan::PKCS10_Request::create(key, subject, ext, "SHA-256", rng()).PEM_encode();
  return core::parse_csr(core::Bytes(pem.begin(), pem.end()));
}

std::string refusal(const Botan::PKCS10_Request& req, Profile p, const Botan::Public_Key& root_key) {
  try {
    check_request(req, p, root_key);
  } catch (const core::Error& e) {
    CHECK(e.code() == errc::CsrRefused);
    return e.what();
  }
  FAIL("the CSR was accepted");
  return {};
}

Botan::X509_Certificate issue_for(Fixture& f, Profile p, const Botan::X509_DN& subject) {
  const auto req = csr(f.subject_key, subject);
  const auto out = check_request(req, p, f.root_key);
  return issue(f.root, f.root_key, req, out, p, default_days(p), true, rng());
}

}  // namespace

TEST_CASE("the root: self-signed, CA with path length 1, keyCertSign and cRLSign, both critical") {
  Fixture f;
  CHECK(f.root.is_self_signed());
  CHECK(f.root.check_signature(f.root_key));
  CHECK(f.root.is_CA_cert());
  CHECK(f.root.path_limit() == 1);
  CHECK(f.root.v3_extensions().critical_extension_set(Botan::OID("2.5.29.19")));
  CHECK(f.root.constraints() == Botan::Key_Constraints(Botan::KEY_CERT_SIGN | Botan::CRL_SIGN));
}

TEST_CASE("device-ca and service-ca: CA path length 0, keyCertSign|cRLSign, subject O and CN only") {
  Fixture f;
  for (const auto p : {Profile::DeviceCa, Profile::ServiceCa}) {
    const auto c = issue_for(f, p, dn({{"X520.Organization", "ACME"}, {"X520.CommonName", "Station A Device CA"}}));
    CHECK(c.is_CA_cert());
    CHECK(c.path_limit() == 0);
    CHECK(c.constraints() == Botan::Key_Constraints(Botan::KEY_CERT_SIGN | Botan::CRL_SIGN));
    CHECK(c.extended_key_usage().empty());
    CHECK(c.subject_dn().get_first_attribute("X520.CommonName") == "Station A Device CA");
    CHECK(c.issuer_dn() == f.root.subject_dn());
    CHECK_NOTHROW(core::verify_chain(c, {}, {f.root}));
    CHECK_FALSE(f.root.not_after() < c.not_after());  // clamped to the root's end
  }
}

TEST_CASE("station: the core station profile (clientAuth, station policy, OU), an OU in the CSR is optional") {
  Fixture f;
  const auto c = issue_for(f, Profile::Station, dn({{"X520.CommonName", "station-a"}}));
  CHECK(core::read_station_id(c) == "station-a");
  CHECK_FALSE(c.is_CA_cert());
  const auto c2 = issue_for(f, Profile::Station,
                            dn({{"X520.OrganizationalUnit", core::kStationUnit}, {"X520.CommonName", "station-b"}}));
  CHECK(core::read_station_id(c2) == "station-b");
}

TEST_CASE("code-signing: EKU codeSigning, digitalSignature only, CA:false") {
  Fixture f;
  const auto c = issue_for(f, Profile::CodeSigning, dn({{"X520.CommonName", "firmware signer"}}));
  CHECK(c.extended_key_usage() == std::vector<Botan::OID>{Botan::OID("1.3.6.1.5.5.7.3.3")});
  CHECK(c.constraints() == Botan::DIGITAL_SIGNATURE);
  CHECK_FALSE(c.is_CA_cert());
}

TEST_CASE("a CSR asking for CA:true is refused under the station and code-signing profiles") {
  Fixture f;
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Basic_Constraints(true, 0), true);
  const auto req = csr(f.subject_key, dn({{"X520.CommonName", "station-a"}}), ext);
  CHECK(refusal(req, Profile::Station, f.root_key).find("CA:true") != std::string::npos);
  CHECK(refusal(req, Profile::CodeSigning, f.root_key).find("CA:true") != std::string::npos);
  CHECK_NOTHROW(check_request(req, Profile::DeviceCa, f.root_key));  // what a CA profile issues anyway
}

TEST_CASE("a CA CSR asking for a longer path, another usage or EKU is refused") {
  Fixture f;
  Botan::Extensions path;
  path.add(new Botan::Cert_Extension::Basic_Constraints(true, 3), true);
  CHECK(refusal(csr(f.subject_key, dn({{"X520.CommonName", "ca"}}), path), Profile::DeviceCa, f.root_key)
            .find("path length") != std::string::npos);
  Botan::Extensions eku;
  eku.add(new Botan::Cert_Extension::Extended_Key_Usage({Botan::OID("1.3.6.1.5.5.7.3.1")}), false);
  CHECK(refusal(csr(f.subject_key, dn({{"X520.CommonName", "station-a"}}), eku), Profile::Station, f.root_key)
            .find("extendedKeyUsage") != std::string::npos);
  Botan::Extensions ku;
  ku.add(new Botan::Cert_Extension::Key_Usage(Botan::DIGITAL_SIGNATURE), true);
  CHECK(refusal(csr(f.subject_key, dn({{"X520.CommonName", "ca"}}), ku), Profile::ServiceCa, f.root_key)
            .find("keyUsage") != std::string::npos);
}

TEST_CASE("a subjectAltName in a CSR is refused, not dropped") {
  Fixture f;
  Botan::AlternativeName alt;
  alt.add_attribute("DNS", "evil.example");
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Subject_Alternative_Name(alt), false);
  const auto why = refusal(csr(f.subject_key, dn({{"X520.CommonName", "station-a"}}), ext), Profile::Station, f.root_key);
  CHECK(why.find("2.5.29.17") != std::string::npos);
}

TEST_CASE("a subject attribute the profile does not allow is refused by name") {
  Fixture f;
  auto why = refusal(csr(f.subject_key, dn({{"X520.Country", "DE"}, {"X520.CommonName", "station-a"}})),
                     Profile::Station, f.root_key);
  CHECK(why.find("X520.Country") != std::string::npos);
  why = refusal(csr(f.subject_key, dn({{"X520.OrganizationalUnit", "ops"}, {"X520.CommonName", "ca"}})),
                Profile::DeviceCa, f.root_key);
  CHECK(why.find("X520.OrganizationalUnit") != std::string::npos);
  why = refusal(csr(f.subject_key, dn({{"X520.OrganizationalUnit", "other unit"}, {"X520.CommonName", "station-a"}})),
                Profile::Station, f.root_key);
  CHECK(why.find("OU must be") != std::string::npos);
  why = refusal(csr(f.subject_key, dn({{"X520.CommonName", "not a station id!"}})), Profile::Station, f.root_key);
  CHECK(why.find("not a station id") != std::string::npos);
  why = refusal(csr(f.subject_key, dn({{"X520.Organization", "ACME"}})), Profile::DeviceCa, f.root_key);
  CHECK(why.find("no ") != std::string::npos);
}

TEST_CASE("a subject value with a control character is refused before it is echoed anywhere") {
  Fixture f;
  const auto why = refusal(csr(f.subject_key, dn({{"X520.CommonName", "Device CA\x1b[2J"}})), Profile::DeviceCa,
                           f.root_key);
  CHECK(why.find("control character") != std::string::npos);
  CHECK(why.find('\x1b') == std::string::npos);
}

TEST_CASE("a subject value with a C1 control (8-bit CSI), a bidi override or invalid UTF-8 is refused") {
  Fixture f;
  for (const char* cn : {"Evil\xc2\x9b" "2J CA", "Device \xe2\x80\xae" "AC", "Device \xff CA"}) {
    CAPTURE(cn);
    const auto why = refusal(csr(f.subject_key, dn({{"X520.CommonName", cn}})), Profile::DeviceCa, f.root_key);
    CHECK(why.find("control character") != std::string::npos);
  }
  // Printable non-ASCII text is a name like any other.
  CHECK_NOTHROW(check_request(csr(f.subject_key, dn({{"X520.CommonName", "Gie\xc3\x9f" "erei CA"}})),
                              Profile::DeviceCa, f.root_key));
}

TEST_CASE("each profile has a maximum validity: a longer draft never reaches the root key") {
  Fixture f;
  CHECK(max_days(Profile::Station) == core::kTlsValidityDays);
  CHECK(max_days(Profile::CodeSigning) == 365);
  CHECK(max_days(Profile::DeviceCa) == 3650);
  const auto st = csr(f.subject_key, dn({{"X520.CommonName", "station-a"}}));
  const auto st_subject = check_request(st, Profile::Station, f.root_key);
  CHECK_NOTHROW(issue(f.root, f.root_key, st, st_subject, Profile::Station, core::kTlsValidityDays, false, rng()));
  CHECK_THROWS_WITH_AS(issue(f.root, f.root_key, st, st_subject, Profile::Station, 3600, false, rng()),
                       doctest::Contains("validity longer"), core::Error);
  const auto cs = csr(f.subject_key, dn({{"X520.CommonName", "signer"}}));
  const auto cs_subject = check_request(cs, Profile::CodeSigning, f.root_key);
  CHECK_THROWS_WITH_AS(issue(f.root, f.root_key, cs, cs_subject, Profile::CodeSigning, 366, false, rng()),
                       doctest::Contains("validity longer"), core::Error);
}

TEST_CASE("a CSR for the root's own key is refused") {
  Fixture f;
  const auto why = refusal(csr(f.root_key, dn({{"X520.CommonName", "ca"}})), Profile::DeviceCa, f.root_key);
  CHECK(why.find("root's own key") != std::string::npos);
}

TEST_CASE("parse_csr: a changed byte, an RSA key and garbage are refused") {
  Fixture f;
  const auto req = Botan::PKCS10_Request::create(f.subject_key, dn({{"X520.CommonName", "station-a"}}),
                                                 Botan::Extensions(), "SHA-256", rng());
  auto der = req.BER_encode();
  CHECK_NOTHROW(core::parse_csr(core::Bytes(der.begin(), der.end())));
  // The subject's CN value sits inside the signed part: one flipped byte breaks the self-signature.
  const std::string cn = "station-a";
  auto it = std::search(der.begin(), der.end(), cn.begin(), cn.end());
  REQUIRE(it != der.end());
  *it = 'S';
  CHECK_THROWS_WITH_AS(core::parse_csr(core::Bytes(der.begin(), der.end())), doctest::Contains("self-signature"),
                       core::FormatError);
  Botan::RSA_PrivateKey rsa(rng(), 1024);
  const auto rsa_req = Botan::PKCS10_Request::create(rsa, dn({{"X520.CommonName", "x"}}), Botan::Extensions(),
                                                     "SHA-256", rng(), "EMSA3(SHA-256)");
  const auto rsa_der = rsa_req.BER_encode();
  CHECK_THROWS_WITH_AS(core::parse_csr(core::Bytes(rsa_der.begin(), rsa_der.end())), doctest::Contains("P-256"),
                       core::FormatError);
  CHECK_THROWS_AS(core::parse_csr(core::Bytes{0x30, 0x03, 0x02, 0x01, 0x00}), core::FormatError);
}

TEST_CASE("lint_issued: a certificate outliving the root or not issued by it never reaches the root key") {
  Fixture f;
  const auto req = csr(f.subject_key, dn({{"X520.CommonName", "ca"}}));
  const auto subject = check_request(req, Profile::DeviceCa, f.root_key);
  CHECK_THROWS_WITH_AS(issue(f.root, f.root_key, req, subject, Profile::DeviceCa, 3650 + 30, false, rng()),
                       doctest::Contains("before the root's"), core::Error);
  Fixture other;
  const auto foreign = issue_for(other, Profile::DeviceCa, dn({{"X520.CommonName", "ca"}}));
  CHECK_THROWS_WITH_AS(lint_issued(foreign, Profile::DeviceCa, f.root), doctest::Contains("the root's"), core::Error);
  // A station certificate linted as a code-signing one fails (EKU), and vice versa.
  const auto station = issue_for(f, Profile::Station, dn({{"X520.CommonName", "station-a"}}));
  CHECK_THROWS_AS(lint_issued(station, Profile::CodeSigning, f.root), core::Error);
  const auto signer = issue_for(f, Profile::CodeSigning, dn({{"X520.CommonName", "signer"}}));
  CHECK_THROWS_AS(lint_issued(signer, Profile::Station, f.root), core::Error);
  CHECK_THROWS_AS(lint_issued(signer, Profile::DeviceCa, f.root), core::Error);
}
