// HTTP Message Signatures (RFC 9421) and Content-Digest (RFC 9530): the RFC's own examples byte-exact,
// the KPS profile, and the answers a device must refuse (tampered, unsigned, bound to another request).
#include <doctest/doctest.h>

#include <botan/auto_rng.h>
#include <botan/data_src.h>
#include <botan/ecdsa.h>
#include <botan/ed25519.h>
#include <botan/pkcs8.h>
#include <botan/x509_key.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "keyline/core/error.h"
#include "keyline/core/http_signature.h"
#include "vector_file.h"

using namespace keyline;
namespace hs = core::http_signature;

namespace {

// tests/vectors/http_signature/<file>: "[name]" starts a section; its lines are joined by LF.
std::map<std::string, std::string> sections(const std::string& file) {
  const char* src = std::getenv("KEYLINE_SOURCE_DIR");
  REQUIRE(src != nullptr);
  std::ifstream in(std::string(src) + "/tests/vectors/http_signature/" + file);
  REQUIRE(in.good());
  std::map<std::string, std::string> out;
  std::string line, name;
  std::getline(in, line);
  REQUIRE(line.rfind("# Source: RFC 9421", 0) == 0);
  while (std::getline(in, line)) {
    if (line.rfind("#", 0) == 0) continue;
    if (line.size() > 2 && line.front() == '[' && line.back() == ']') {
      name = line.substr(1, line.size() - 2);
      continue;
    }
    auto& s = out[name];
    s += (s.empty() ? "" : "\n") + line;
  }
  return out;
}

const std::map<std::string, std::string>& rfc() {
  static auto v = sections("rfc9421_appendix_b.txt");
  return v;
}

std::unique_ptr<Botan::Public_Key> public_key(const std::string& pem) {
  Botan::DataSource_Memory src(pem);
  return std::unique_ptr<Botan::Public_Key>(Botan::X509::load_key(src));
}

// RFC 9421 Appendix B.2 test-request, the parts B.2.6 covers.
hs::Message test_request() {
  hs::Message m;
  m.method = "POST";
  m.authority = "example.com";
  m.path = "/foo";
  m.query = "param=Value&Pet=dog";
  m.headers = {{"Host", "example.com"},
               {"Date", "Tue, 20 Apr 2021 02:07:55 GMT"},
               {"Content-Type", "application/json"},
               {"Content-Digest", "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"},
               {"Content-Length", "18"}};
  return m;
}

hs::Message test_response() {
  hs::Message m;
  m.is_response = true;
  m.status = 200;
  m.headers = {{"Date", "Tue, 20 Apr 2021 02:07:56 GMT"},
               {"Content-Type", "application/json"},
               {"Content-Digest", rfc().at("b24-content-digest")},
               {"Content-Length", "23"}};
  return m;
}

}  // namespace

TEST_CASE("RFC 9530: Content-Digest sha-256 known answers and the check refuses another body") {
  std::ifstream in(std::string(std::getenv("KEYLINE_SOURCE_DIR")) +
                   "/tests/vectors/http_signature/rfc9530_content_digest.txt");
  std::string line;
  std::getline(in, line);
  REQUIRE(line.rfind("# Source: RFC 9530", 0) == 0);
  int sha256_rows = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream row(line);
    std::string body_hex, alg, digest;
    row >> body_hex >> alg >> digest;
    const core::Bytes body = core::from_hex(body_hex);
    if (alg != "sha-256") continue;
    ++sha256_rows;
    CHECK(hs::content_digest_sha256(body) == "sha-256=:" + digest + ":");
    hs::verify_content_digest("sha-256=:" + digest + ":", body.data(), body.size());
    core::Bytes other = body;
    other.back() ^= 1;
    CHECK_THROWS_AS(hs::verify_content_digest("sha-256=:" + digest + ":", other.data(), other.size()),
                    core::CryptoError);
  }
  CHECK(sha256_rows >= 1);
  // A dictionary with sha-512 first and sha-256 second (RFC 9530 section 2): sha-256 is the one checked.
  const std::string body = "{\"hello\": \"world\"}";
  hs::verify_content_digest("sha-512=:AAAA:, sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", body);
  CHECK_THROWS_AS(hs::verify_content_digest("sha-512=:AAAA:", body), core::FormatError);
  CHECK_THROWS_AS(hs::verify_content_digest("sha-256=X48E", body), core::FormatError);
}

TEST_CASE("RFC 9421 B.2.6: the ed25519 signature base and signature byte-exact") {
  const auto input = hs::parse_signature_input(rfc().at("b26-signature-input"), "sig-b26");
  CHECK(input.components.size() == 6);
  CHECK(input.created == 1618884473);
  CHECK(input.keyid == "test-key-ed25519");
  CHECK(!input.alg);
  const auto request = test_request();
  const std::string base = hs::signature_base(input, request, nullptr);
  CHECK(base == rfc().at("b26-base"));
  // The re-serialized Signature-Input is the received one.
  CHECK("sig-b26=" + hs::serialize_params(input) == rfc().at("b26-signature-input"));

  Botan::AutoSeeded_RNG rng;
  Botan::DataSource_Memory src(rfc().at("test-key-ed25519-private"));
  std::unique_ptr<Botan::Private_Key> key(Botan::PKCS8::load_key(src));
  const auto fields = hs::sign_message("sig-b26", input, request, nullptr, hs::botan_signer(*key, hs::Algorithm::Ed25519, rng));
  CHECK(fields.signature == rfc().at("b26-signature"));
  CHECK(fields.signature_input == rfc().at("b26-signature-input"));

  auto signed_request = request;
  signed_request.headers.emplace_back("Signature-Input", rfc().at("b26-signature-input"));
  signed_request.headers.emplace_back("Signature", rfc().at("b26-signature"));
  auto pub = public_key(rfc().at("test-key-ed25519-public"));
  hs::verify_message("sig-b26", signed_request, nullptr, *pub, hs::Algorithm::Ed25519);
  signed_request.path = "/bar";
  CHECK_THROWS_AS(hs::verify_message("sig-b26", signed_request, nullptr, *pub, hs::Algorithm::Ed25519),
                  core::CryptoError);
}

TEST_CASE("RFC 9421 B.2.4: the ecdsa-p256-sha256 response signature verifies (raw r||s) and a change does not") {
  const auto input = hs::parse_signature_input(rfc().at("b24-signature-input"), "sig-b24");
  auto response = test_response();
  CHECK(hs::signature_base(input, response, nullptr) == rfc().at("b24-base"));
  response.headers.emplace_back("Signature-Input", rfc().at("b24-signature-input"));
  response.headers.emplace_back("Signature", rfc().at("b24-signature"));
  auto pub = public_key(rfc().at("test-key-ecc-p256-public"));
  hs::verify_message("sig-b24", response, nullptr, *pub, hs::Algorithm::EcdsaP256Sha256);
  CHECK(hs::parse_signature(rfc().at("b24-signature"), "sig-b24").size() == 64);
  response.status = 201;
  CHECK_THROWS_AS(hs::verify_message("sig-b24", response, nullptr, *pub, hs::Algorithm::EcdsaP256Sha256),
                  core::CryptoError);
  response.status = 200;
  // The right key under the wrong algorithm name is refused before any signature check.
  CHECK_THROWS_AS(hs::verify_message("sig-b24", response, nullptr, *pub, hs::Algorithm::Ed25519), core::CryptoError);
}

TEST_CASE("derived components @query @target-uri @scheme and req-bound ones and what is refused") {
  hs::Params p;
  p.components = {{"@method"}, {"@query"}, {"@target-uri"}, {"@scheme"}};
  p.created = 1;
  const auto req = test_request();
  CHECK(hs::signature_base(p, req, nullptr) ==
        "\"@method\": POST\n\"@query\": ?param=Value&Pet=dog\n\"@target-uri\": https://example.com/foo?param=Value&Pet=dog\n"
        "\"@scheme\": https\n\"@signature-params\": (\"@method\" \"@query\" \"@target-uri\" \"@scheme\");created=1");
  hs::Message response;
  response.is_response = true;
  response.status = 503;
  hs::Params r;
  r.components = {{"@status"}, {"@method", true}, {"date", true}};
  CHECK(hs::signature_base(r, response, &req) ==
        "\"@status\": 503\n\"@method\";req: POST\n\"date\";req: Tue, 20 Apr 2021 02:07:55 GMT\n"
        "\"@signature-params\": (\"@status\" \"@method\";req \"date\";req)");
  CHECK_THROWS_CODE(hs::signature_base(r, response, nullptr), BadSignatureField);  // ;req without a request
  r.components = {{"@status"}, {"@status"}};
  CHECK_THROWS_CODE(hs::signature_base(r, response, &req), BadSignatureField);  // listed twice
  r.components = {{"x-absent"}};
  CHECK_THROWS_CODE(hs::signature_base(r, response, &req), BadSignatureField);
  r.components = {{"@method"}};
  CHECK_THROWS_CODE(hs::signature_base(r, response, &req), BadSignatureField);  // a response has no @method
  // Several fields of one name are combined with ", " (section 2.1), values trimmed.
  hs::Headers h{{"X-A", " one "}, {"x-a", "two"}};
  CHECK(hs::header_value(h, "x-a") == std::optional<std::string>("one, two"));
}

TEST_CASE("structured-field parsing refuses malformed Signature-Input and Signature") {
  for (const char* bad : {"", "kps", "kps=", "kps=(\"a\"", "kps=(\"a\" 1)", "kps=(\"a\");created=\"x\"",
                          "kps=(\"a\");keyid=5", "kps=(\"a\";bs)", "kps=(\"a\"),", "Kps=(\"a\")", "kps=(\"a\"\"b\")",
                          "kps=(\"a\\q\")", "kps=(a)", "kps=:AAAA:"}) {
    INFO(bad);
    CHECK_THROWS_CODE(hs::parse_signature_input(bad, "kps"), BadSignatureField);
  }
  CHECK_THROWS_CODE(hs::parse_signature("kps=:AAA:", "kps"), BadSignatureField);
  CHECK_THROWS_CODE(hs::parse_signature("kps=(\"a\")", "kps"), BadSignatureField);
  CHECK_THROWS_CODE(hs::parse_signature("other=:AAAA:", "kps"), BadSignatureField);
  // Several members: the one asked for is taken; unknown parameters are ignored.
  const auto p = hs::parse_signature_input("a=(\"x\");created=2, kps=(\"@status\";req);created=3;foo=?1", "kps");
  CHECK(p.created == 3);
  CHECK(p.components.size() == 1);
  CHECK(p.components[0].req);
  CHECK(hs::dictionary_labels("a=1, b=(\"c\"), d") == std::vector<std::string>{"a", "b", "d"});
  CHECK(hs::algorithm_from_name("ed25519") == hs::Algorithm::Ed25519);
  CHECK_THROWS_CODE(hs::algorithm_from_name("hmac-sha256"), BadSignatureField);
}

namespace {

struct Kps {
  Botan::AutoSeeded_RNG rng;
  Botan::ECDSA_PrivateKey key{rng, Botan::EC_Group("secp256r1")};
  hs::Signer signer = hs::botan_signer(key, hs::Algorithm::EcdsaP256Sha256, rng);
};

hs::Headers device_request(const std::string& nonce) {
  return {{"Keyline-Certificates", "AAAA"}, {"Keyline-Timestamp", "1800000000"}, {"Keyline-Nonce", nonce},
          {"Keyline-Signature", "MEUCIQ" + nonce}};
}

constexpr std::int64_t kNow = 1800000000;

}  // namespace

TEST_CASE("KPS profile: a signed answer verifies and tampered or unsigned or moved or stale answers are refused") {
  Kps kps;
  const auto req = device_request("00112233445566778899aabbccddeeff");
  const std::string body = "{\"notifications\":[]}";
  hs::Headers h{{"Content-Type", "application/json"}};
  hs::sign_kps_response(200, h, body, req, "kps-sign-1", kNow, hs::Algorithm::EcdsaP256Sha256, kps.signer);
  CHECK(hs::header_value(h, "signature-input").value().rfind(
            "kps=(\"@status\" \"content-digest\" \"keyline-signature\";req \"keyline-nonce\";req);created=1800000000;"
            "keyid=\"kps-sign-1\";alg=\"ecdsa-p256-sha256\"", 0) == 0);
  hs::verify_kps_response(200, h, body, req, kps.key, hs::Algorithm::EcdsaP256Sha256, kNow + 10);

  // Tampered body: Content-Digest no longer matches.
  CHECK_THROWS_AS(hs::verify_kps_response(200, h, body + " ", req, kps.key, hs::Algorithm::EcdsaP256Sha256, kNow),
                  core::CryptoError);
  // Another status (e.g. a proxy turning a 403 into a 200).
  CHECK_THROWS_AS(hs::verify_kps_response(403, h, body, req, kps.key, hs::Algorithm::EcdsaP256Sha256, kNow),
                  core::CryptoError);
  // The same answer replayed to another request (other nonce and signature).
  const auto other = device_request("ffeeddccbbaa99887766554433221100");
  CHECK_THROWS_AS(hs::verify_kps_response(200, h, body, other, kps.key, hs::Algorithm::EcdsaP256Sha256, kNow),
                  core::CryptoError);
  // Signed by anyone else.
  Kps forger;
  hs::Headers f{{"Content-Type", "application/json"}};
  hs::sign_kps_response(200, f, body, req, "kps-sign-1", kNow, hs::Algorithm::EcdsaP256Sha256, forger.signer);
  CHECK_THROWS_AS(hs::verify_kps_response(200, f, body, req, kps.key, hs::Algorithm::EcdsaP256Sha256, kNow),
                  core::CryptoError);
  // Unsigned: no Signature fields, or no Content-Digest.
  hs::Headers unsigned_h{{"Content-Type", "application/json"}, {"Content-Digest", hs::content_digest_sha256(body)}};
  CHECK_THROWS_CODE(hs::verify_kps_response(200, unsigned_h, body, req, kps.key, hs::Algorithm::EcdsaP256Sha256, kNow),
                    BadSignatureField);
  CHECK_THROWS_CODE(hs::verify_kps_response(200, {}, body, req, kps.key, hs::Algorithm::EcdsaP256Sha256, kNow),
                    BadSignatureField);
  // Stale or from the future.
  CHECK_THROWS_AS(hs::verify_kps_response(200, h, body, req, kps.key, hs::Algorithm::EcdsaP256Sha256, kNow + 301),
                  core::CryptoError);
  CHECK_THROWS_AS(hs::verify_kps_response(200, h, body, req, kps.key, hs::Algorithm::EcdsaP256Sha256, kNow - 301),
                  core::CryptoError);
}

TEST_CASE("KPS profile: a signature that leaves out the req binding is refused even when it verifies") {
  Kps kps;
  const auto req = device_request("00112233445566778899aabbccddeeff");
  const std::string body = "{}";
  hs::Headers h{{"Content-Digest", hs::content_digest_sha256(body)}};
  hs::Params p;
  p.components = hs::kps_components(false);  // "@status" "content-digest" only
  p.created = kNow;
  p.keyid = "kps-sign-1";
  p.alg = "ecdsa-p256-sha256";
  hs::Message response;
  response.is_response = true;
  response.status = 200;
  response.headers = h;
  const auto fields = hs::sign_message("kps", p, response, nullptr, kps.signer);
  h.emplace_back("Signature-Input", fields.signature_input);
  h.emplace_back("Signature", fields.signature);
  CHECK_THROWS_CODE(hs::verify_kps_response(200, h, body, req, kps.key, hs::Algorithm::EcdsaP256Sha256, kNow),
                    BadSignatureField);
}

TEST_CASE("KPS profile: an owner's request (no device signature) gets status and digest covered") {
  Kps kps;
  const hs::Headers req{{"Authorization", "Bearer x"}};
  hs::Headers h;
  hs::sign_kps_response(201, h, "{}", req, "kps-sign-1", kNow, hs::Algorithm::EcdsaP256Sha256, kps.signer);
  hs::Message response;
  response.is_response = true;
  response.status = 201;
  response.headers = h;
  hs::Message request;
  request.headers = req;
  const auto p = hs::verify_message("kps", response, &request, kps.key, hs::Algorithm::EcdsaP256Sha256);
  CHECK(p.components == hs::kps_components(false));
}
