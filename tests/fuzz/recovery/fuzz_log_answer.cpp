// The public DB's log answers as keyline-recovery reads them (issue #18, docs/recovery.md section 7):
// GET /v1/records/{chip}/proof and GET /v1/log/consistency come from a server the tool does not
// trust, and an offline bundle's "log" member comes from a file. The first byte picks the parser,
// the rest is the body. Whatever the bytes, the parser
// gives an answer or throws Error(LogNotVerified); an inclusion answer that parses, written back,
// parses to the same answer.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "keyline/core/error.h"
#include "keyline/recovery/errors.h"
#include "keyline/recovery/log_check.h"

namespace {

using namespace keyline;

std::string hashes(const std::vector<core::Bytes>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ",\"" : "\"") + core::to_base64(v[i]) + "\"";
  return s + "]";
}

void inclusion(const std::string& body) {
  const auto a = recovery::parse_inclusion_answer(body);
  const auto b = recovery::parse_inclusion_answer("{\"leaf_index\":" + std::to_string(a.leaf_index) + ",\"tree_size\":" +
                                                  std::to_string(a.tree_size) + ",\"leaf_hash\":\"" +
                                                  core::to_base64(a.leaf_hash) + "\",\"proof\":" + hashes(a.proof) + "}");
  if (b.leaf_index != a.leaf_index || b.tree_size != a.tree_size || b.leaf_hash != a.leaf_hash || b.proof != a.proof)
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    if (data[0] % 3 == 0) inclusion(body);
    else if (data[0] % 3 == 1) (void)recovery::parse_consistency_answer(body, 2, 5);
    else (void)recovery::parse_bundle_log(body);
  } catch (const core::Error& e) {
    if (e.code() != recovery::errc::LogNotVerified) std::abort();
  }
  return 0;
}
