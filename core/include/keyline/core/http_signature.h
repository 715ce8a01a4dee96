// HTTP Message Signatures (RFC 9421) and Content-Digest (RFC 9530), the parts the KPS and its devices use.
// Shared because the KPS signs every answer and the device agent verifies it (docs/kps.md "Signed answers").
//
// What is covered: the derived components "@status", "@method", "@path", "@query", "@authority",
// "@scheme", "@target-uri" (RFC 9421 section 2.2), header fields by lower-case name (section 2.1), the
// ";req" parameter that takes a component from the request a response answers (section 2.4), the
// signature base (section 2.5), the Signature-Input and Signature dictionaries (sections 4.1, 4.2, RFC 8941
// structured fields), and the algorithms ecdsa-p256-sha256 (section 3.3.4: the signature is raw r || s,
// 64 bytes) and ed25519 (section 3.3.6). Not covered: "sf", "key", "bs", "tr" component parameters,
// trailers, "@request-target", "@query-param".
//
// The KPS profile (label "kps"):
//   Signature-Input: kps=("@status" "content-digest" "keyline-signature";req "keyline-nonce";req);
//                        created=<t>;keyid="<kid>";alg="ecdsa-p256-sha256"
//   Signature: kps=:<base64>:
// The ";req" members bind the answer to the device's signed request (core/device_auth.h): an answer
// replayed to another request fails.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <botan/pk_keys.h>
#include <botan/rng.h>

#include "keyline/core/bytes.h"

namespace keyline::core::http_signature {

constexpr const char* kContentDigestHeader = "Content-Digest";
constexpr const char* kSignatureInputHeader = "Signature-Input";
constexpr const char* kSignatureHeader = "Signature";
constexpr const char* kKpsLabel = "kps";
constexpr std::int64_t kDefaultMaxAgeSeconds = 300;

// ---- RFC 9530 Content-Digest ----
// "sha-256=:<base64 of SHA-256(body)>:" (RFC 9530 sections 2 and 5).
std::string content_digest_sha256(const std::uint8_t* body, std::size_t len);
inline std::string content_digest_sha256(const Bytes& body) { return content_digest_sha256(body.data(), body.size()); }
inline std::string content_digest_sha256(const std::string& body) {
  return content_digest_sha256(reinterpret_cast<const std::uint8_t*>(body.data()), body.size());
}
// Checks a received Content-Digest field: it must parse as an RFC 8941 dictionary and hold a "sha-256"
// byte sequence equal to SHA-256(body); other algorithms are ignored (RFC 9530 section 2). Throws
// FormatError(BadSignatureField) when it does not parse or has no sha-256 member, CryptoError(Crypto)
// when the digest differs.
void verify_content_digest(const std::string& field_value, const std::uint8_t* body, std::size_t len);
inline void verify_content_digest(const std::string& field_value, const std::string& body) {
  verify_content_digest(field_value, reinterpret_cast<const std::uint8_t*>(body.data()), body.size());
}

// ---- Messages ----
// Header fields in arrival order; names compare case-insensitively. Several fields of one name are
// combined with ", " (RFC 9421 section 2.1).
using Headers = std::vector<std::pair<std::string, std::string>>;
// The value of a header (combined), or nullopt when absent.
std::optional<std::string> header_value(const Headers& headers, const std::string& name);

// A request or a response as the signature sees it. For a request: method, scheme, authority, path
// (as sent, "/" when empty) and query (without '?', nullopt when the target has none). For a response:
// status. headers: the message's fields.
struct Message {
  bool is_response = false;
  int status = 0;
  std::string method;
  std::string scheme = "https";
  std::string authority;
  std::string path = "/";
  std::optional<std::string> query;
  Headers headers;
};

// ---- Signature parameters ----
struct Component {
  std::string name;  // "@status", "content-digest", ... (lower case)
  bool req = false;  // ";req": the value comes from the request this response answers
  bool operator==(const Component& o) const { return name == o.name && req == o.req; }
};

// One signature's parameters in their order (RFC 9421 section 2.3); serialized canonically (RFC 8941
// section 4.1) both when signing and when verifying, so order and values are covered by the signature.
struct Params {
  std::vector<Component> components;
  std::optional<std::int64_t> created;
  std::optional<std::int64_t> expires;
  std::optional<std::string> keyid;
  std::optional<std::string> alg;
  std::optional<std::string> nonce;
  std::optional<std::string> tag;
  // The order the parameters appear in (names of the optionals above that are set). When empty,
  // serialize() uses created, expires, nonce, alg, keyid, tag.
  std::vector<std::string> order;
};

// The inner list with parameters: ("@status" "content-digest";req);created=1;keyid="k".
std::string serialize_params(const Params& params);

// The signature base (section 2.5): one line per component, then the "@signature-params" line, no
// trailing newline. request: the request for ";req" components and for a request's own components
// when message is the request (nullptr when there is none). Throws FormatError(BadSignatureField) when a
// component is missing from its message, is unknown, or a ";req" component has no request.
std::string signature_base(const Params& params, const Message& message, const Message* request);

// ---- Field parsing (untrusted) ----
// Signature-Input (section 4.1): the dictionary member `label`. Throws FormatError(BadSignatureField)
// when the field does not parse as an RFC 8941 dictionary of inner lists, the member is absent, or a
// parameter has the wrong type (created/expires integer, keyid/alg/nonce/tag string).
Params parse_signature_input(const std::string& field_value, const std::string& label);
// Signature (section 4.2): the byte sequence of member `label`. Same errors.
Bytes parse_signature(const std::string& field_value, const std::string& label);
// All labels of a Signature-Input or Signature dictionary, in order (for the fuzz target and logs).
std::vector<std::string> dictionary_labels(const std::string& field_value);

// ---- Algorithms ----
enum class Algorithm { EcdsaP256Sha256, Ed25519 };
std::string algorithm_name(Algorithm alg);  // "ecdsa-p256-sha256", "ed25519"
// Throws FormatError(BadSignatureField) for any other name.
Algorithm algorithm_from_name(const std::string& name);

// A signer takes the signature base and returns the signature in the RFC's form (raw r || s for
// ecdsa-p256-sha256, 64 bytes for ed25519). The KPS signs on a PKCS#11 token; tests sign with Botan.
using Signer = std::function<Bytes(const Bytes& base)>;
// A signer over a Botan private key (ECDSA P-256 or Ed25519).
Signer botan_signer(const Botan::Private_Key& key, Algorithm alg, Botan::RandomNumberGenerator& rng);
// True when signature verifies over base with key under alg (ecdsa: raw r || s, 64 bytes).
bool verify_signature(const Botan::Public_Key& key, Algorithm alg, const Bytes& base, const Bytes& signature);

// ---- Sign and verify a message ----
struct SignatureFields {
  std::string signature_input;  // value for Signature-Input: label=(...);params
  std::string signature;        // value for Signature: label=:base64:
};
// Signs message (a response with request, or a request with request == nullptr) under label.
SignatureFields sign_message(const std::string& label, const Params& params, const Message& message,
                             const Message* request, const Signer& signer);
// Verifies the signature `label` of message: parses both fields, checks alg (when present) names
// expected_alg, rebuilds the base and verifies. Returns the parameters (the caller checks coverage and
// times). Throws FormatError(BadSignatureField) for missing or malformed fields, CryptoError(Crypto) for
// a signature that does not verify.
Params verify_message(const std::string& label, const Message& message, const Message* request,
                      const Botan::Public_Key& key, Algorithm expected_alg);

// ---- The KPS profile ----
// The components of a KPS answer, in this order: "@status" "content-digest", then, when the request was
// signed by a device (it carries Keyline-Signature), "keyline-signature";req "keyline-nonce";req. An
// owner's Bearer request has no device signature to bind to (its client checks status and digest).
std::vector<Component> kps_components(bool device_request = true);
// Adds Content-Digest (of body), Signature-Input and Signature (label "kps", created, keyid, alg) to
// response_headers, an answer to a request with request_headers.
void sign_kps_response(int status, Headers& response_headers, const std::string& body,
                       const Headers& request_headers, const std::string& keyid, std::int64_t created,
                       Algorithm alg, const Signer& signer);
// The device side: the answer must carry a Content-Digest equal to SHA-256(body), a "kps" signature whose
// components include kps_components() (with ";req" on the request's Keyline-Signature and Keyline-Nonce),
// created within max_age of now (and not more than max_age ahead), alg == expected alg, and a signature
// that verifies with key. Throws FormatError(BadSignatureField) or CryptoError(Crypto) saying which check
// failed.
void verify_kps_response(int status, const Headers& response_headers, const std::string& body,
                         const Headers& request_headers, const Botan::Public_Key& key, Algorithm alg,
                         std::int64_t now, std::int64_t max_age = kDefaultMaxAgeSeconds);

}  // namespace keyline::core::http_signature
