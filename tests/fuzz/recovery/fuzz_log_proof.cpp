// Proof files for `keyline-recovery log verify-*` (issue #18). Whatever the bytes, the parsers
// either give a probe or throw FormatError(BadProof); a probe that parses must check without
// throwing, and written back as JSON it must parse to the same probe.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "keyline/core/error.h"
#include "keyline/recovery/log_verify.h"

namespace {

using namespace keyline;
namespace lv = recovery::log_verify;

std::string hashes(const std::vector<core::Bytes>& proof) {
  std::string s = "[";
  for (std::size_t i = 0; i < proof.size(); ++i) s += (i ? ",\"" : "\"") + core::to_base64(proof[i]) + "\"";
  return s + "]";
}

std::string b64(const core::Bytes& b) { return "\"" + core::to_base64(b) + "\""; }

void round_trip(const lv::InclusionProbe& p) {
  const auto q = lv::parse_inclusion("{\"leafIdx\":" + std::to_string(p.leaf_index) + ",\"treeSize\":" +
                                     std::to_string(p.tree_size) + ",\"root\":" + b64(p.root) +
                                     ",\"leafHash\":" + b64(p.leaf_hash) + ",\"proof\":" + hashes(p.proof) + "}");
  if (q.leaf_index != p.leaf_index || q.tree_size != p.tree_size || q.root != p.root || q.leaf_hash != p.leaf_hash ||
      q.proof != p.proof)
    std::abort();
}

void round_trip(const lv::ConsistencyProbe& p) {
  const auto q = lv::parse_consistency("{\"size1\":" + std::to_string(p.size1) + ",\"size2\":" + std::to_string(p.size2) +
                                       ",\"root1\":" + b64(p.root1) + ",\"root2\":" + b64(p.root2) +
                                       ",\"proof\":" + hashes(p.proof) + "}");
  if (q.size1 != p.size1 || q.size2 != p.size2 || q.root1 != p.root1 || q.root2 != p.root2 || q.proof != p.proof)
    std::abort();
}

template <class Probe>
void checked(const Probe& p) {
  const lv::Report r = lv::check(p);  // noexcept in effect: a throw escapes and fails the run
  if (r.valid != r.reason.empty() || r.checked.empty()) std::abort();
  round_trip(p);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    checked(lv::parse_inclusion(text));
  } catch (const core::FormatError& e) {
    if (e.code() != core::ErrorCode::BadProof) std::abort();
  }
  try {
    checked(lv::parse_consistency(text));
  } catch (const core::FormatError& e) {
    if (e.code() != core::ErrorCode::BadProof) std::abort();
  }
  return 0;
}
