// Inclusion and consistency proofs from a hostile log (core::merkle verifiers, RFC 9162 sections
// 2.1.3.2 and 2.1.4.2). Input: mode byte, two little-endian uint64 (index/size or size1/size2),
// then elements as a length byte and that many bytes. Modes 0/1 feed everything raw (no crash, no
// hang); modes 2/3 fix the leaf and roots from a real 64-leaf tree, where a proof that verifies
// must be the one the generator makes (a second valid proof would be a SHA-256 collision).
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "keyline/core/merkle.h"

namespace {

std::uint64_t u64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

const keyline::core::merkle::MemoryTree& tree() {
  static const auto t = [] {
    keyline::core::merkle::MemoryTree m;
    for (std::uint8_t i = 0; i < 64; ++i) m.append(keyline::core::merkle::leaf_hash(keyline::core::Bytes{i}));
    return m;
  }();
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  using namespace keyline::core::merkle;
  if (size < 17) return 0;
  const unsigned mode = data[0] % 4;
  std::uint64_t a = u64(data + 1), b = u64(data + 9);
  std::vector<Bytes> elements;
  for (std::size_t at = 17; at < size && elements.size() < 200;) {
    const std::size_t len = data[at++];
    const std::size_t n = len < size - at ? len : size - at;
    elements.emplace_back(data + at, data + at + n);
    at += n;
  }
  if (mode == 0 && elements.size() >= 2) {
    (void)inclusion_valid(a, b, elements[0], {elements.begin() + 2, elements.end()}, elements[1]);
  } else if (mode == 1 && elements.size() >= 2) {
    (void)consistency_valid(a, b, {elements.begin() + 2, elements.end()}, elements[0], elements[1]);
  } else if (mode == 2) {
    b = b % 64 + 1;
    a %= b;
    const auto real = inclusion_proof(tree(), a, b);
    if (inclusion_valid(a, b, to_bytes(tree().subtree(0, a)), elements, to_bytes(tree_root(tree(), b)))) {
      if (elements.size() != real.size()) std::abort();
      for (std::size_t i = 0; i < real.size(); ++i)
        if (elements[i] != to_bytes(real[i])) std::abort();
    }
  } else if (mode == 3) {
    b = b % 64 + 1;
    a = a % b + 1;
    const auto real = consistency_proof(tree(), a, b);
    if (consistency_valid(a, b, elements, to_bytes(tree_root(tree(), a)), to_bytes(tree_root(tree(), b)))) {
      if (elements.size() != real.size()) std::abort();
      for (std::size_t i = 0; i < real.size(); ++i)
        if (elements[i] != to_bytes(real[i])) std::abort();
    }
  }
  return 0;
}
