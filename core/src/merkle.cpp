#include "keyline/core/merkle.h"

#include <algorithm>
#include <limits>
#include <memory>

#include <botan/hash.h>

#include "keyline/core/error.h"

namespace keyline::core::merkle {

namespace {

// One SHA-256 object per thread: creating one per hash was a visible share of appending a batch.
Botan::HashFunction& sha256() {
  thread_local std::unique_ptr<Botan::HashFunction> h = Botan::HashFunction::create_or_throw("SHA-256");
  return *h;
}

Hash finish(Botan::HashFunction& h) {
  Hash out;
  h.final(out.data());
  return out;
}

[[noreturn]] void refuse(const std::string& why) { throw FormatError(ErrorCode::BadProof, why); }

bool is_power_of_two(std::uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

unsigned log2_exact(std::uint64_t n) {
  unsigned l = 0;
  while ((std::uint64_t{1} << l) != n) ++l;
  return l;
}

Hash checked_hash(const Bytes& b, const char* what) {
  const auto h = to_hash(b);
  if (!h) refuse(std::string(what) + " is " + std::to_string(b.size()) + " bytes, not 32");
  return *h;
}

// Right-shifts both until fn's lowest bit is set or fn is 0 (RFC 9162 sections 2.1.3.2 and 2.1.4.2).
void shift_to_set_bit(std::uint64_t& fn, std::uint64_t& sn) {
  while ((fn & 1) == 0 && fn != 0) {
    fn >>= 1;
    sn >>= 1;
  }
}

}  // namespace

Hash empty_root() {
  auto& h = sha256();
  return finish(h);
}

Hash leaf_hash(const std::uint8_t* data, std::size_t len) {
  auto& h = sha256();
  h.update(0x00);
  h.update(data, len);
  return finish(h);
}

Hash node_hash(const Hash& left, const Hash& right) {
  auto& h = sha256();
  h.update(0x01);
  h.update(left.data(), left.size());
  h.update(right.data(), right.size());
  return finish(h);
}

std::optional<Hash> to_hash(const Bytes& b) {
  if (b.size() != hash_size) return std::nullopt;
  Hash h;
  std::copy(b.begin(), b.end(), h.begin());
  return h;
}

std::uint64_t split_point(std::uint64_t n) {
  if (n < 2) refuse("split point of a tree of fewer than 2 leaves");
  std::uint64_t k = 1;
  while (k < n - k) k <<= 1;  // k < n/2 rounded up, written so that k << 1 never overflows
  return k;
}

Hash range_root(const HashSource& source, std::uint64_t begin, std::uint64_t end) {
  if (end < begin) refuse("range end before its begin");
  const std::uint64_t n = end - begin;
  if (n == 0) return empty_root();
  if (is_power_of_two(n) && begin % n == 0) return source.subtree(log2_exact(n), begin / n);
  const std::uint64_t k = split_point(n);
  return node_hash(range_root(source, begin, begin + k), range_root(source, begin + k, end));
}

std::vector<Hash> inclusion_proof(const HashSource& source, std::uint64_t index, std::uint64_t size) {
  if (index >= size) refuse("leaf index " + std::to_string(index) + " not below tree size " + std::to_string(size));
  // PATH(m, D[begin, begin + n)) unrolled: the sibling range of each split, root to leaf.
  std::vector<Hash> path;
  std::uint64_t m = index, begin = 0, n = size;
  while (n > 1) {
    const std::uint64_t k = split_point(n);
    if (m < k) {
      path.push_back(range_root(source, begin + k, begin + n));
      n = k;
    } else {
      path.push_back(range_root(source, begin, begin + k));
      m -= k;
      begin += k;
      n -= k;
    }
  }
  std::reverse(path.begin(), path.end());
  return path;
}

std::vector<Hash> consistency_proof(const HashSource& source, std::uint64_t size1, std::uint64_t size2) {
  if (size1 > size2) refuse("consistency from a larger tree to a smaller one");
  if (size1 == 0 || size1 == size2) return {};
  // SUBPROOF(m, D[begin, begin + n), b) unrolled.
  std::vector<Hash> path;
  std::uint64_t m = size1, begin = 0, n = size2;
  bool whole = true;
  while (m != n) {
    const std::uint64_t k = split_point(n);
    if (m <= k) {
      path.push_back(range_root(source, begin + k, begin + n));
      n = k;
    } else {
      path.push_back(range_root(source, begin, begin + k));
      m -= k;
      begin += k;
      n -= k;
      whole = false;
    }
  }
  if (!whole) path.push_back(range_root(source, begin, begin + n));
  std::reverse(path.begin(), path.end());
  return path;
}

void verify_inclusion(std::uint64_t index, std::uint64_t size, const Bytes& leaf_hash_in,
                      const std::vector<Bytes>& proof, const Bytes& root_in) {
  if (index >= size) refuse("leaf index " + std::to_string(index) + " not below tree size " + std::to_string(size));
  const Hash leaf = checked_hash(leaf_hash_in, "leaf hash");
  const Hash root = checked_hash(root_in, "root hash");
  if (proof.size() > 64) refuse("inclusion proof longer than any tree's height");
  std::uint64_t fn = index, sn = size - 1;
  Hash r = leaf;
  for (const auto& element : proof) {
    const Hash p = checked_hash(element, "proof element");
    if (sn == 0) refuse("inclusion proof too long");
    if ((fn & 1) != 0 || fn == sn) {
      r = node_hash(p, r);
      if ((fn & 1) == 0) shift_to_set_bit(fn, sn);
    } else {
      r = node_hash(r, p);
    }
    fn >>= 1;
    sn >>= 1;
  }
  if (sn != 0) refuse("inclusion proof too short");
  if (r != root) refuse("inclusion proof leads to another root");
}

void verify_consistency(std::uint64_t size1, std::uint64_t size2, const std::vector<Bytes>& proof,
                        const Bytes& root1_in, const Bytes& root2_in) {
  if (size2 < size1) refuse("second tree smaller than the first");
  const Hash root1 = checked_hash(root1_in, "first root");
  const Hash root2 = checked_hash(root2_in, "second root");
  if (size1 == 0 || size1 == size2) {
    if (!proof.empty()) refuse("a consistency proof from size 0 or to the same size must be empty");
    if (size1 == 0 && root1 != empty_root()) refuse("first root is not the empty tree's");
    if (size1 == size2 && root1 != root2) refuse("same size, different roots");
    return;
  }
  if (proof.empty()) refuse("empty consistency proof");
  if (proof.size() > 128) refuse("consistency proof longer than any two trees need");
  std::vector<Hash> path;
  if (is_power_of_two(size1)) path.push_back(root1);
  for (const auto& element : proof) path.push_back(checked_hash(element, "proof element"));
  std::uint64_t fn = size1 - 1, sn = size2 - 1;
  while ((fn & 1) != 0) {
    fn >>= 1;
    sn >>= 1;
  }
  Hash fr = path[0], sr = path[0];
  for (std::size_t i = 1; i < path.size(); ++i) {
    if (sn == 0) refuse("consistency proof too long");
    if ((fn & 1) != 0 || fn == sn) {
      fr = node_hash(path[i], fr);
      sr = node_hash(path[i], sr);
      if ((fn & 1) == 0) shift_to_set_bit(fn, sn);
    } else {
      sr = node_hash(sr, path[i]);
    }
    fn >>= 1;
    sn >>= 1;
  }
  if (sn != 0) refuse("consistency proof too short");
  if (fr != root1) refuse("consistency proof does not lead to the first root");
  if (sr != root2) refuse("consistency proof does not lead to the second root");
}

bool inclusion_valid(std::uint64_t index, std::uint64_t size, const Bytes& leaf_hash_in,
                     const std::vector<Bytes>& proof, const Bytes& root) noexcept {
  try {
    verify_inclusion(index, size, leaf_hash_in, proof, root);
    return true;
  } catch (...) {
    return false;
  }
}

bool consistency_valid(std::uint64_t size1, std::uint64_t size2, const std::vector<Bytes>& proof,
                       const Bytes& root1, const Bytes& root2) noexcept {
  try {
    verify_consistency(size1, size2, proof, root1, root2);
    return true;
  } catch (...) {
    return false;
  }
}

CompactRange CompactRange::load(const HashSource& source, std::uint64_t size) {
  CompactRange range;
  std::uint64_t begin = 0;
  for (int level = 63; level >= 0; --level) {
    const std::uint64_t width = std::uint64_t{1} << level;
    if ((size & width) == 0) continue;
    range.m_edge.push_back(source.subtree(static_cast<unsigned>(level), begin >> level));
    begin += width;
  }
  range.m_size = size;
  return range;
}

void CompactRange::append(const Hash& leaf, const NodeVisitor& visit) {
  if (m_size == std::numeric_limits<std::uint64_t>::max()) refuse("tree is full");
  const std::uint64_t index = m_size;
  if (visit) visit(0, index, leaf);
  Hash h = leaf;
  unsigned level = 0;
  // Each set low bit of the new leaf's index is a complete left sibling on the edge to merge with.
  while (level < 63 && ((index >> level) & 1) != 0) {
    h = node_hash(m_edge.back(), h);
    m_edge.pop_back();
    ++level;
    if (visit) visit(level, index >> level, h);
  }
  m_edge.push_back(h);
  ++m_size;
}

Hash CompactRange::root() const {
  if (m_edge.empty()) return empty_root();
  Hash r = m_edge.back();
  for (std::size_t i = m_edge.size() - 1; i-- > 0;) r = node_hash(m_edge[i], r);
  return r;
}

void MemoryTree::append(const Hash& leaf) {
  m_edge.append(leaf, [this](unsigned level, std::uint64_t, const Hash& h) {
    if (m_levels.size() <= level) m_levels.resize(level + 1);
    m_levels[level].push_back(h);
  });
}

Hash MemoryTree::subtree(unsigned level, std::uint64_t index) const {
  if (level >= m_levels.size() || index >= m_levels[level].size())
    refuse("subtree " + std::to_string(level) + "/" + std::to_string(index) + " is not complete in this tree");
  return m_levels[level][index];
}

}  // namespace keyline::core::merkle
