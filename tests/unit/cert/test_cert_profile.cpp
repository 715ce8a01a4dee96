// Certificate profile: issue root -> Device CA -> identity/transport with in-process keys, read the
// identity back, lint, chain checks, and an outside opinion from `openssl verify` / `openssl x509`.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <filesystem>
#include <functional>
#include <fstream>
#include <string>

#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/der_enc.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/hex.h>
#include <botan/pubkey.h>
#include <botan/rsa.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"

using namespace keyline::core;
namespace fs = std::filesystem;

namespace {

struct Pki {
  Botan::AutoSeeded_RNG rng;
  Botan::EC_Group p256{"secp256r1"};
  Botan::ECDSA_PrivateKey root_key{rng, p256};
  Botan::ECDSA_PrivateKey ca_key{rng, p256};
  Botan::ECDSA_PrivateKey device_key{rng, p256};
  Botan::X509_Certificate root = make_root_certificate(root_key, "keyline Test Root", "keyline test", rng);
  Botan::X509_Certificate ca = make_ca_certificate(root, root_key, ca_key, "keyline Test Device CA", "keyline test", 0, rng);
  Imei imei = Imei::parse("490154203237518");
  ChipId chip = ChipId::parse("4790507812345678ABCD");
  Botan::X509_Certificate identity =
      issue_identity_certificate(ca, ca_key, device_key, imei, chip, kDefaultHwType, rng);
};

Pki& pki() {
  static Pki p;
  return p;
}

struct Run {
  int status;
  std::string out;
};
Run run(const std::string& cmd) {
  Run r{-1, {}};
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  r.status = ::pclose(p);
  return r;
}

fs::path temp_dir() {
  char tmpl[] = "/tmp/keyline-cert-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  return tmpl;
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream o(p, std::ios::binary);
  o << s;
}

// A certificate with the identity's TBS contents but one extension left out or changed, signed by the CA.
Botan::X509_Certificate variant(const Botan::Extensions& ext, const Botan::X509_DN& subject,
                                const Botan::Public_Key& key) {
  auto& p = pki();
  Botan::AlgorithmIdentifier alg;
  std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(p.ca_key, p.rng, "SHA-256", alg));
  return Botan::X509_CA::make_cert(signer.get(), p.rng, alg, key.subject_public_key(),
                                   Botan::X509_Time(std::chrono::system_clock::now()),
                                   Botan::X509_Time(kNotAfter, Botan::GENERALIZED_TIME), p.ca.subject_dn(), subject,
                                   ext);
}

Botan::Extensions base_extensions(const Botan::Public_Key& key, bool with_san = true,
                                  Botan::Key_Constraints usage = Botan::DIGITAL_SIGNATURE) {
  auto& p = pki();
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
  ext.add(new Botan::Cert_Extension::Key_Usage(usage), true);
  ext.add(new Botan::Cert_Extension::Subject_Key_ID(key.subject_public_key(), "SHA-256"), false);
  ext.add(new Botan::Cert_Extension::Authority_Key_ID(p.ca.subject_key_id()), false);
  if (with_san) ext.add(new HardwareModuleNameExtension(Botan::OID(kDefaultHwType), p.chip), false);
  return ext;
}

Botan::X509_DN serial_dn(const std::string& s) {
  Botan::X509_DN dn;
  dn.add_attribute("X520.SerialNumber", s);
  return dn;
}

ErrorCode lint_code(const Botan::X509_Certificate& c, CertKind kind) {
  try {
    lint_certificate(c, kind);
  } catch (const Error& e) {
    return e.code();
  }
  return static_cast<ErrorCode>(0);
}

}  // namespace

TEST_CASE("constants are the documented ones") {
  CHECK(std::string(kDefaultHwType) == "1.3.6.1.4.1.59999.1.1");
  CHECK(std::string(kNotAfter) == "21991231235959Z");
}

TEST_CASE("HardwareModuleName SAN encodes per RFC 4108 and round-trips") {
  const auto chip = ChipId::parse("4790507812345678ABCD");
  HardwareModuleNameExtension e(Botan::OID(kDefaultHwType), chip);
  Botan::Extensions ext;
  ext.add(e.copy(), false);
  // Expected DER of GeneralNames written out by hand from RFC 5280 4.2.1.6 and RFC 4108 5.
  const auto expected = Botan::hex_decode(
      "3028"                          // GeneralNames SEQUENCE
      "A026"                          // [0] otherName (constructed, implicit)
      "0608 2B06010505070804"         // type-id 1.3.6.1.5.5.7.8.4
      "A01A"                          // [0] EXPLICIT value
      "3018"                          // HardwareModuleName SEQUENCE
      "060A 2B0601040183D45F0101"     // hwType 1.3.6.1.4.1.59999.1.1
      "040A 4790507812345678ABCD");   // hwSerialNum
  const auto& cert = pki().identity;
  CHECK(cert.v3_extensions().get_extension_bits(HardwareModuleNameExtension::static_oid()) == expected);
  const auto back = HardwareModuleNameExtension::from_der(expected);
  CHECK(back.hw_type().to_string() == kDefaultHwType);
  CHECK(Bytes(back.hw_serial()) == Bytes(chip.bytes().begin(), chip.bytes().end()));

  auto junk = expected;
  junk[11] ^= 0x01;  // another otherName type-id (last arc of 1.3.6.1.5.5.7.8.4)
  CHECK_THROWS_AS(HardwareModuleNameExtension::from_der(junk), FormatError);
  CHECK_THROWS_AS(HardwareModuleNameExtension::from_der(Bytes(expected.begin(), expected.end() - 1)), FormatError);
}

TEST_CASE("identity certificate: read_identity, lint and chain") {
  auto& p = pki();
  const auto facts = read_identity(p.identity);
  CHECK(facts.imei.str() == "490154203237518");
  CHECK(facts.chip_id.str() == "4790507812345678ABCD");
  CHECK(facts.hw_type == kDefaultHwType);
  CHECK_NOTHROW(lint_certificate(p.identity, CertKind::Identity));
  CHECK(p.identity.not_after().to_string() == "21991231235959Z");
  CHECK(p.identity.is_critical("X509v3.KeyUsage"));
  CHECK(p.identity.is_critical("X509v3.BasicConstraints"));
  CHECK(p.identity.authority_key_id() == p.ca.subject_key_id());
  CHECK(lint_code(p.identity, CertKind::Transport) == ErrorCode::CertificateLint);
  CHECK_NOTHROW(verify_chain(p.identity, {p.ca}, {p.root}));
  CHECK_NOTHROW(verify_chain(p.ca, {}, {p.root}));
}

TEST_CASE("the DER form is a canonical certificate that the CA signed, with the linted contents") {
  auto& p = pki();
  const Bytes der = issue_identity_certificate_der(p.ca, p.ca_key, p.device_key, p.imei, p.chip, kDefaultHwType, p.rng);
  const Botan::X509_Certificate cert(der);
  CHECK(cert.BER_encode() == der);  // the TBS we encode is the DER Botan re-encodes: nothing non-canonical
  CHECK(cert.x509_version() == 3);
  CHECK_NOTHROW(lint_certificate(cert, CertKind::Identity));
  CHECK_NOTHROW(verify_chain(cert, {p.ca}, {p.root}));
  CHECK(read_identity(cert).chip_id == p.chip);
  CHECK(cert.subject_public_key_bits() == p.identity.subject_public_key_bits());
  // Every certificate gets its own random serial.
  CHECK(cert.serial_number() != p.identity.serial_number());
}

TEST_CASE("transport certificate carries an X25519 key with keyAgreement") {
  auto& p = pki();
  Botan::Curve25519_PrivateKey x(p.rng);
  const auto t = issue_transport_certificate(p.ca, p.ca_key, x, p.imei, p.chip, kDefaultHwType, p.rng);
  CHECK_NOTHROW(lint_certificate(t, CertKind::Transport));
  CHECK(lint_code(t, CertKind::Identity) == ErrorCode::CertificateLint);
  CHECK(t.constraints() == Botan::KEY_AGREEMENT);
  std::unique_ptr<Botan::Public_Key> k(t.subject_public_key());
  CHECK(k->algo_name() == "Curve25519");
  CHECK(k->public_key_bits() == x.public_key_bits());
  CHECK_NOTHROW(verify_chain(t, {p.ca}, {p.root}));
  // The X25519 key cannot be issued an identity certificate.
  CHECK_THROWS_AS(issue_identity_certificate(p.ca, p.ca_key, x, p.imei, p.chip, kDefaultHwType, p.rng), Error);
}

TEST_CASE("lint rejects a bad IMEI, a missing SAN, an RSA or P-384 key, a CA flag, a DNS SAN") {
  auto& p = pki();
  CHECK(lint_code(variant(base_extensions(p.device_key), serial_dn("490154203237519"), p.device_key),
                  CertKind::Identity) == ErrorCode::CertificateLint);
  CHECK(lint_code(variant(base_extensions(p.device_key, false), serial_dn("490154203237518"), p.device_key),
                  CertKind::Identity) == ErrorCode::CertificateLint);
  Botan::RSA_PrivateKey rsa(p.rng, 2048);
  CHECK(lint_code(variant(base_extensions(rsa), serial_dn("490154203237518"), rsa), CertKind::Identity) ==
        ErrorCode::CertificateLint);
  Botan::ECDSA_PrivateKey p384(p.rng, Botan::EC_Group("secp384r1"));
  CHECK(lint_code(variant(base_extensions(p384), serial_dn("490154203237518"), p384), CertKind::Identity) ==
        ErrorCode::CertificateLint);
  // The same builder with nothing wrong passes, so the rejections above are about the one change.
  CHECK(lint_code(variant(base_extensions(p.device_key), serial_dn("490154203237518"), p.device_key),
                  CertKind::Identity) == static_cast<ErrorCode>(0));
  auto ca_flag = base_extensions(p.device_key);
  ca_flag.replace(new Botan::Cert_Extension::Basic_Constraints(true, 0), true);
  CHECK(lint_code(variant(ca_flag, serial_dn("490154203237518"), p.device_key), CertKind::Identity) ==
        ErrorCode::CertificateLint);
  Botan::Extensions odd = base_extensions(p.device_key, false);
  odd.add(new Botan::Cert_Extension::Subject_Alternative_Name(Botan::AlternativeName("", "", "device.example")), false);
  CHECK(lint_code(variant(odd, serial_dn("490154203237518"), p.device_key), CertKind::Identity) ==
        ErrorCode::CertificateLint);
  // read_identity refuses a certificate without the SAN.
  CHECK_THROWS_AS(read_identity(variant(base_extensions(p.device_key, false), serial_dn("490154203237518"),
                                        p.device_key)),
                  FormatError);
  // A CA certificate is not an identity certificate.
  CHECK(lint_code(p.ca, CertKind::Identity) == ErrorCode::CertificateLint);
}

TEST_CASE("verify_chain rejects a wrong root, a tampered certificate and a non-CA issuer") {
  auto& p = pki();
  Botan::ECDSA_PrivateKey other_key(p.rng, p.p256);
  const auto other_root = make_root_certificate(other_key, "keyline Test Root", "keyline test", p.rng);
  try {
    verify_chain(p.identity, {p.ca}, {other_root});
    FAIL("chain to a wrong root accepted");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::ChainInvalid);
  }
  CHECK_THROWS_AS(verify_chain(p.identity, {}, {p.root}), Error);  // intermediate missing

  // Flip one byte inside the signed part (the hwSerialNum's last chip ID byte).
  auto der = p.identity.BER_encode();
  const Bytes chip(p.chip.bytes().begin(), p.chip.bytes().end());
  auto it = std::search(der.begin(), der.end(), chip.begin(), chip.end());
  REQUIRE(it != der.end());
  *(it + 9) ^= 0x01;
  const Botan::X509_Certificate tampered(der);
  CHECK(read_identity(tampered).chip_id.str() == "4790507812345678ABCC");
  CHECK_THROWS_AS(verify_chain(tampered, {p.ca}, {p.root}), Error);

  // An end-entity certificate (the identity) cannot act as an issuer.
  Botan::ECDSA_PrivateKey k2(p.rng, p.p256);
  Botan::AlgorithmIdentifier alg;
  std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(p.device_key, p.rng, "SHA-256", alg));
  const auto under_leaf = Botan::X509_CA::make_cert(
      signer.get(), p.rng, alg, k2.subject_public_key(), Botan::X509_Time(std::chrono::system_clock::now()),
      Botan::X509_Time(kNotAfter, Botan::GENERALIZED_TIME), p.identity.subject_dn(), serial_dn("260531793113837"),
      Botan::Extensions());
  CHECK_THROWS_AS(verify_chain(under_leaf, {p.identity, p.ca}, {p.root}), Error);
}

TEST_CASE("PEM round trip") {
  auto& p = pki();
  const auto dir = temp_dir();
  write(dir / "chain.pem", to_pem(p.identity) + to_pem(p.ca));
  const auto certs = load_certificates_pem((dir / "chain.pem").string());
  REQUIRE(certs.size() == 2);
  CHECK(certs[0] == p.identity);
  CHECK(certs[1] == p.ca);
  CHECK_THROWS_AS(parse_certificates_pem("no certificate here"), FormatError);
  CHECK_THROWS_AS(load_certificates_pem((dir / "missing.pem").string()), IoError);
  fs::remove_all(dir);
}

TEST_CASE("openssl accepts the chain and shows serialNumber and the otherName") {
  auto& p = pki();
  const auto dir = temp_dir();
  write(dir / "root.pem", to_pem(p.root));
  write(dir / "ca.pem", to_pem(p.ca));
  write(dir / "identity.pem", to_pem(p.identity));
  const auto v = run("openssl verify -CAfile " + (dir / "root.pem").string() + " -untrusted " +
                     (dir / "ca.pem").string() + " " + (dir / "identity.pem").string());
  INFO(v.out);
  CHECK(v.status == 0);
  CHECK(v.out.find("identity.pem: OK") != std::string::npos);

  // Against another root openssl must refuse, so the check above can fail.
  Botan::ECDSA_PrivateKey other_key(p.rng, p.p256);
  write(dir / "other.pem", to_pem(make_root_certificate(other_key, "keyline Test Root", "keyline test", p.rng)));
  const auto bad = run("openssl verify -CAfile " + (dir / "other.pem").string() + " -untrusted " +
                       (dir / "ca.pem").string() + " " + (dir / "identity.pem").string());
  CHECK(bad.status != 0);

  const auto t = run("openssl x509 -noout -text -in " + (dir / "identity.pem").string());
  INFO(t.out);
  CHECK(t.status == 0);
  CHECK(t.out.find("serialNumber = 490154203237518") != std::string::npos);
  CHECK(t.out.find("othername:") != std::string::npos);
  CHECK(t.out.find("Not After : Dec 31 23:59:59 2199 GMT") != std::string::npos);
  CHECK(t.out.find("Digital Signature") != std::string::npos);
  CHECK(t.out.find("CA:FALSE") != std::string::npos);
  CHECK(t.out.find("othername: 1.3.6.1.5.5.7.8.4") != std::string::npos);
  // openssl's own parse of the SAN value shows the HardwareModuleName fields.
  const auto san = p.identity.v3_extensions().get_extension_bits(HardwareModuleNameExtension::static_oid());
  write(dir / "san.der", std::string(san.begin(), san.end()));
  const auto a = run("openssl asn1parse -inform DER -in " + (dir / "san.der").string());
  INFO(a.out);
  CHECK(a.status == 0);
  CHECK(a.out.find(":1.3.6.1.5.5.7.8.4") != std::string::npos);
  CHECK(a.out.find(":1.3.6.1.4.1.59999.1.1") != std::string::npos);
  CHECK(a.out.find("OCTET STRING      [HEX DUMP]:4790507812345678ABCD") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("TLS certificates from a service CA: openssl checks purpose, host name and IP") {
  auto& p = pki();
  Botan::ECDSA_PrivateKey svc_key(p.rng, p.p256), srv_key(p.rng, p.p256), cli_key(p.rng, p.p256);
  const auto svc = make_ca_certificate(p.root, p.root_key, svc_key, "keyline Test Service CA", "keyline test", 0, p.rng);
  const auto srv = issue_tls_certificate(svc, svc_key, srv_key, "backupdb", {"localhost", "127.0.0.1"},
                                         TlsRole::Server, p.rng);
  const auto cli = issue_tls_certificate(svc, svc_key, cli_key, "station-1", {}, TlsRole::Client, p.rng);
  CHECK_NOTHROW(verify_chain(srv, {svc}, {p.root}));
  CHECK(srv.subject_info("DNS").size() == 1);
  const auto dir = temp_dir();
  write(dir / "root.pem", to_pem(p.root));
  write(dir / "svc.pem", to_pem(svc));
  write(dir / "srv.pem", to_pem(srv));
  write(dir / "cli.pem", to_pem(cli));
  const std::string base = "openssl verify -CAfile " + (dir / "root.pem").string() + " -untrusted " +
                           (dir / "svc.pem").string() + " ";
  CHECK(run(base + "-purpose sslserver -verify_hostname localhost " + (dir / "srv.pem").string()).status == 0);
  CHECK(run(base + "-purpose sslserver -verify_ip 127.0.0.1 " + (dir / "srv.pem").string()).status == 0);
  CHECK(run(base + "-purpose sslserver -verify_hostname example.org " + (dir / "srv.pem").string()).status != 0);
  CHECK(run(base + "-purpose sslclient " + (dir / "cli.pem").string()).status == 0);
  CHECK(run(base + "-purpose sslserver " + (dir / "cli.pem").string()).status != 0);
  fs::remove_all(dir);
}

TEST_CASE("the SAN decoder answers every one-byte corruption and truncation with FormatError or a value") {
  const auto good = pki().identity.v3_extensions().get_extension_bits(HardwareModuleNameExtension::static_oid());
  int refused = 0;
  for (std::size_t i = 0; i < good.size(); ++i) {
    for (std::uint8_t flip : {0x01, 0x80, 0xFF}) {
      auto bad = good;
      bad[i] ^= flip;
      try {
        HardwareModuleNameExtension::from_der(bad);
      } catch (const FormatError& e) {
        CHECK(e.code() == ErrorCode::BadCertificate);
        ++refused;
      }
    }
    CHECK_THROWS_AS(HardwareModuleNameExtension::from_der(std::vector<std::uint8_t>(good.begin(), good.begin() + i)),
                    FormatError);
  }
  CHECK(refused > 0);
}

TEST_CASE("read_identity refuses a subject serialNumber that is not an IMEI") {
  auto& p = pki();
  try {
    read_identity(variant(base_extensions(p.device_key), serial_dn("490154203237519"), p.device_key));
    FAIL("bad IMEI read");
  } catch (const FormatError& e) {
    CHECK(e.code() == ErrorCode::BadCertificate);
  }
}

// --- the station certificate profile and server certificates (docs/decisions.md) -------------------

TEST_CASE("the station certificate has the station profile, a server certificate never has it") {
  auto& p = pki();
  Botan::ECDSA_PrivateKey svc_key(p.rng, p.p256), st_key(p.rng, p.p256), srv_key(p.rng, p.p256);
  const auto svc = make_ca_certificate(p.root, p.root_key, svc_key, "keyline Test Service CA", "keyline test", 0, p.rng);
  const auto st = issue_station_certificate(svc, svc_key, st_key, "line-3.station_a", p.rng);
  CHECK(read_station_id(st) == "line-3.station_a");
  CHECK_NOTHROW(lint_station_certificate(st));
  CHECK(st.extended_key_usage() == std::vector<Botan::OID>{Botan::OID("1.3.6.1.5.5.7.3.2")});
  CHECK(st.certificate_policy_oids() == std::vector<Botan::OID>{Botan::OID("1.3.6.1.4.1.59999.2.1")});
  CHECK(st.subject_dn().get_first_attribute("X520.OrganizationalUnit") == kStationUnit);
  CHECK_THROWS_AS(lint_server_certificate(st), Error);
  const auto srv = issue_tls_certificate(svc, svc_key, srv_key, "keyline-kps", {"db.example.org", "10.1.2.3"},
                                         TlsRole::Server, p.rng);
  CHECK_NOTHROW(lint_server_certificate(srv));
  CHECK(srv.extended_key_usage() == std::vector<Botan::OID>{Botan::OID("1.3.6.1.5.5.7.3.1")});
  CHECK(srv.certificate_policy_oids().empty());
  CHECK(srv.subject_alt_name().get_attribute("DNS") == std::vector<std::string>{"db.example.org"});
  CHECK(srv.subject_alt_name().get_attribute("IP") == std::vector<std::string>{"10.1.2.3"});
  CHECK_THROWS_AS(read_station_id(srv), FormatError);
  CHECK_THROWS_AS(lint_station_certificate(srv), Error);
  // A lifetime, not 2199: nothing revokes a TLS certificate.
  CHECK(srv.not_after().to_std_timepoint() < std::chrono::system_clock::now() + std::chrono::hours(24 * 731));
}

TEST_CASE("the issuer refuses to sign a station certificate with a bad station id or a server with bad names") {
  auto& p = pki();
  Botan::ECDSA_PrivateKey svc_key(p.rng, p.p256), k(p.rng, p.p256);
  const auto svc = make_ca_certificate(p.root, p.root_key, svc_key, "keyline Test Service CA", "keyline test", 0, p.rng);
  auto lint_error = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.code() == ErrorCode::CertificateLint;
    }
    return false;
  };
  CHECK(lint_error([&] { issue_station_certificate(svc, svc_key, k, "station 1", p.rng); }));
  CHECK(lint_error([&] { issue_station_certificate(svc, svc_key, k, "", p.rng); }));
  CHECK(lint_error([&] { issue_station_certificate(svc, svc_key, k, std::string(65, 'x'), p.rng); }));
  CHECK(lint_error([&] { issue_tls_certificate(svc, svc_key, k, "srv", {}, TlsRole::Server, p.rng); }));
  CHECK(lint_error([&] { issue_tls_certificate(svc, svc_key, k, "srv", {"bad_name"}, TlsRole::Server, p.rng); }));
  CHECK(lint_error([&] { issue_tls_certificate(svc, svc_key, k, "srv", {"-a.example"}, TlsRole::Server, p.rng); }));
  CHECK(lint_error([&] { issue_tls_certificate(svc, svc_key, k, "srv", {"::1"}, TlsRole::Server, p.rng); }));
  CHECK(lint_error([&] { issue_tls_certificate(svc, svc_key, k, "srv", {"1.2.3.999"}, TlsRole::Server, p.rng); }));
}

TEST_CASE("host name and address rules of --dns / --ip") {
  CHECK(is_valid_dns_name("localhost"));
  CHECK(is_valid_dns_name("backupdb.factory-1.example"));
  CHECK_FALSE(is_valid_dns_name(""));
  CHECK_FALSE(is_valid_dns_name("a..b"));
  CHECK_FALSE(is_valid_dns_name("a.b."));
  CHECK_FALSE(is_valid_dns_name("under_score.example"));
  CHECK_FALSE(is_valid_dns_name("-lead.example"));
  CHECK_FALSE(is_valid_dns_name("trail-.example"));
  CHECK_FALSE(is_valid_dns_name(std::string(64, 'a') + ".example"));
  CHECK_FALSE(is_valid_dns_name("10.0.0.1"));
  CHECK_FALSE(is_valid_dns_name("*.example"));
  CHECK(is_ipv4_literal("10.0.0.1"));
  CHECK_FALSE(is_ipv4_literal("10.0.0"));
  CHECK_FALSE(is_ipv4_literal("10.0.0.256"));
  CHECK_FALSE(is_ipv4_literal("::1"));
  CHECK(is_valid_station_id("station-1"));
  CHECK_FALSE(is_valid_station_id("station/1"));
}
