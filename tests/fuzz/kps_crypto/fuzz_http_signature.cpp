// The structured-field parser behind Signature-Input, Signature and Content-Digest (core/http_signature.h)
// over untrusted field values. Input: the Signature-Input value, a newline, the Signature value, a
// newline, the Content-Digest value, a newline, then a body.
// Properties: only core::Error escapes; a parsed "kps" (or first) member re-serializes to a value that
// parses back to the same parameters; a signature base built from it never holds a line break inside a
// line; a Content-Digest that verifies for the body fails for another body.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "keyline/core/error.h"
#include "keyline/core/http_signature.h"

namespace hs = keyline::core::http_signature;

namespace {

std::string take_line(std::string& rest) {
  const auto nl = rest.find('\n');
  std::string line = rest.substr(0, nl);
  rest = nl == std::string::npos ? "" : rest.substr(nl + 1);
  return line;
}

void check_input(const std::string& input) {
  std::string label = "kps";
  try {
    const auto labels = hs::dictionary_labels(input);
    if (!labels.empty()) label = labels.front();
  } catch (const keyline::core::Error&) {
  }
  const hs::Params p = hs::parse_signature_input(input, label);
  const std::string again = label + "=" + hs::serialize_params(p);
  const hs::Params q = hs::parse_signature_input(again, label);
  if (hs::serialize_params(q) != hs::serialize_params(p)) std::abort();
  hs::Message response;
  response.is_response = true;
  response.status = 200;
  response.headers = {{"content-digest", "sha-256=:AAAA:"}, {"keyline-nonce", "00"}, {"keyline-signature", "x"}};
  hs::Message request;
  request.headers = response.headers;
  const std::string base = hs::signature_base(p, response, &request);
  if (base.find('\r') != std::string::npos) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string rest(reinterpret_cast<const char*>(data), size);
  const std::string input = take_line(rest);
  const std::string signature = take_line(rest);
  const std::string digest = take_line(rest);
  try {
    check_input(input);
  } catch (const keyline::core::Error&) {
  }
  try {
    (void)hs::parse_signature(signature, "kps");
  } catch (const keyline::core::Error&) {
  }
  try {
    hs::verify_content_digest(digest, rest);
    try {
      hs::verify_content_digest(digest, rest + "x");
      std::abort();  // one digest for two bodies
    } catch (const keyline::core::CryptoError&) {
    }
  } catch (const keyline::core::Error&) {
  }
  return 0;
}
