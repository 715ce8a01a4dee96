// The KPS's device request verifier (core/device_auth.h) over untrusted headers and request. Input:
// Keyline-Certificates, -Timestamp, -Nonce, -Signature, method and path, one per line, then the body.
// Seeds (tests/fuzz/corpus/device_auth/) are real signed requests of a device under kRoot, so the
// fuzzer starts past the header checks, inside the chain, identity and signature checks.
// Properties: only core::Error escapes; an accepted request names the chip of its identity
// certificate and no longer verifies once its body changes.
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <botan/base64.h>
#include <botan/x509cert.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/device_auth.h"
#include "keyline/core/error.h"

namespace {

// The fixed trust anchor the seeds were made under (a throw-away P-256 root, "fuzz root").
const char* const kRoot =
    "MIIBjDCCATKgAwIBAgIQVR4TZg0eJokjs0xQcf/4+DAKBggqhkjOPQQDAjAjMQ0wCwYDVQQKEwRGdXp6MRIwEAYDVQQDEwlm"
    "dXp6IHJvb3QwIBcNMjYxMjAxMDk0NDA0WhgPMjE5OTEyMzEyMzU5NTlaMCMxDTALBgNVBAoTBEZ1enoxEjAQBgNVBAMTCWZ1"
    "enogcm9vdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABOD4LTpyFy+tDEaFK/QN+IpVB02kXOHfTwPaxh+NYZsH2OZfjxII"
    "XX7yVtuPvU7+J4Ugb1d2k8I9D350V86PbrGjRjBEMCEGA1UdDgQaBBjTbt3ZAMB974vgsqhQR9JfL2vuXmaxnMowDgYDVR0P"
    "AQH/BAQDAgEGMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhALg9Hsozr+XaI4Xq5oIoUWo146AQHDaqYjMi"
    "11pAMWojAiBwxpdHlU9vfG5Ev0YOak1zDs8/RmRNq7nJ+p5+r7NTFw==";
constexpr std::int64_t kNow = 1800000000;  // the seeds' Keyline-Timestamp

const std::vector<Botan::X509_Certificate>& anchors() {
  static const std::vector<Botan::X509_Certificate> a{
      Botan::X509_Certificate(Botan::unlock(Botan::base64_decode(kRoot)))};
  return a;
}

// Splits the first n newline-separated fields off text; the rest is the body.
std::vector<std::string> fields(const std::string& text, std::size_t n, std::string& body) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (out.size() < n) {
    const auto j = text.find('\n', i);
    if (j == std::string::npos) break;
    out.push_back(text.substr(i, j - i));
    i = j + 1;
  }
  body = i <= text.size() ? text.substr(i) : std::string();
  out.resize(n);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace auth = keyline::core::device_auth;
  using keyline::core::Error;
  std::string body;
  const auto f = fields(std::string(reinterpret_cast<const char*>(data), size), 6, body);
  const std::map<std::string, std::string> headers{{auth::kCertificatesHeader, f[0]},
                                                   {auth::kTimestampHeader, f[1]},
                                                   {auth::kNonceHeader, f[2]},
                                                   {auth::kSignatureHeader, f[3]}};
  const auto header = [&headers](const std::string& name) { return headers.at(name); };
  try {
    const auto v = auth::verify_request(header, f[4], f[5], body, anchors(), kNow);
    if (v.chain.empty() || keyline::core::read_identity(v.chain[0]).chip_id.str() != v.chip_id.str()) std::abort();
    try {
      auth::verify_request(header, f[4], f[5], body + "x", anchors(), kNow);
      std::abort();  // the signature does not cover the body
    } catch (const keyline::core::CryptoError&) {
    }
  } catch (const Error&) {
  }
  return 0;
}
