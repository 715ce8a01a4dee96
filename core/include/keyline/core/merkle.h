// RFC 9162 section 2.1 Merkle hash trees (SHA-256): hashing, proof generation over a source of
// complete-subtree hashes (so a large log never rebuilds its tree), proof verification that takes
// hostile input, and the right edge ("compact range") a log appends batches to. docs/transparency.md.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "keyline/core/bytes.h"

namespace keyline::core::merkle {

constexpr std::size_t hash_size = 32;
using Hash = std::array<std::uint8_t, hash_size>;

// RFC 9162 section 2.1.1: MTH({}) = SHA-256(), leaf = SHA-256(0x00 || d), node = SHA-256(0x01 || l || r).
Hash empty_root();
Hash leaf_hash(const std::uint8_t* data, std::size_t len);
inline Hash leaf_hash(const Bytes& d) { return leaf_hash(d.data(), d.size()); }
Hash node_hash(const Hash& left, const Hash& right);
// 32 bytes or nothing (for hashes that came from outside).
std::optional<Hash> to_hash(const Bytes& b);
inline Bytes to_bytes(const Hash& h) { return Bytes(h.begin(), h.end()); }

// The largest power of two strictly smaller than n (n >= 2): the split point k of RFC 9162 section 2.1.1.
std::uint64_t split_point(std::uint64_t n);

// Hashes of complete subtrees: subtree(level, index) = MTH(D[index * 2^level, (index + 1) * 2^level)).
// A log answers from stored hashes (tiles, a table); generators only ask for subtrees that are
// complete in the tree they work on. Throws whatever the store throws for a subtree it lacks.
class HashSource {
 public:
  virtual ~HashSource() = default;
  virtual Hash subtree(unsigned level, std::uint64_t index) const = 0;
};

// MTH(D[begin, end)), split as RFC 9162 section 2.1.1 splits. A range that is one aligned complete
// subtree costs one lookup; the ranges the proof recursion visits cost at most one per set bit of
// their length. MTH({}) for an empty range.
Hash range_root(const HashSource& source, std::uint64_t begin, std::uint64_t end);
inline Hash tree_root(const HashSource& source, std::uint64_t size) { return range_root(source, 0, size); }

// RFC 9162 section 2.1.3.1 PATH(m, D[n]), leaf to root. Throws FormatError(BadProof) unless index < size.
std::vector<Hash> inclusion_proof(const HashSource& source, std::uint64_t index, std::uint64_t size);
// RFC 9162 section 2.1.4.1 PROOF(m, D[n]). Throws FormatError(BadProof) unless 0 < size1 <= size2
// (from 0 or to the same size the proof is empty: call with size1 == size2 to get {}).
std::vector<Hash> consistency_proof(const HashSource& source, std::uint64_t size1, std::uint64_t size2);

// RFC 9162 section 2.1.3.2. Throws FormatError(BadProof) naming the reason when the proof does not
// verify, including for a leaf hash or proof element that is not 32 bytes and index >= size.
void verify_inclusion(std::uint64_t index, std::uint64_t size, const Bytes& leaf_hash,
                      const std::vector<Bytes>& proof, const Bytes& root);
// RFC 9162 section 2.1.4.2, plus the cases it leaves to the caller: size2 < size1 fails; equal sizes
// need an empty proof and equal roots; from size 0 the proof must be empty and root1 must be
// MTH({}). Throws FormatError(BadProof).
void verify_consistency(std::uint64_t size1, std::uint64_t size2, const std::vector<Bytes>& proof,
                        const Bytes& root1, const Bytes& root2);
// The same as answers, for callers that only branch on the result (never throw).
bool inclusion_valid(std::uint64_t index, std::uint64_t size, const Bytes& leaf_hash,
                     const std::vector<Bytes>& proof, const Bytes& root) noexcept;
bool consistency_valid(std::uint64_t size1, std::uint64_t size2, const std::vector<Bytes>& proof,
                       const Bytes& root1, const Bytes& root2) noexcept;

// Called for every complete subtree an append completes: (level, index, hash), the leaf itself
// (level 0) first. A log stores these (level % 8 == 0 are tile hashes, C2SP tlog-tiles).
using NodeVisitor = std::function<void(unsigned level, std::uint64_t index, const Hash& hash)>;

// The right edge of a tree: the roots of the complete subtrees its size decomposes into (one per
// set bit, largest first). Enough to append and to compute the root, O(log n) memory.
class CompactRange {
 public:
  CompactRange() = default;
  // The right edge of the tree of `size` leaves, read from stored hashes (at most 64 lookups).
  static CompactRange load(const HashSource& source, std::uint64_t size);

  std::uint64_t size() const noexcept { return m_size; }
  const std::vector<Hash>& edge() const noexcept { return m_edge; }
  void append(const Hash& leaf, const NodeVisitor& visit = {});
  Hash root() const;

 private:
  std::uint64_t m_size = 0;
  std::vector<Hash> m_edge;
};

// Every complete subtree of a tree held in memory (tests, tile building, small logs): 2n hashes.
class MemoryTree : public HashSource {
 public:
  void append(const Hash& leaf);
  std::uint64_t size() const noexcept { return m_levels.empty() ? 0 : m_levels[0].size(); }
  Hash root() const { return m_edge.root(); }
  // Throws FormatError(BadProof) for a subtree that is not complete in this tree.
  Hash subtree(unsigned level, std::uint64_t index) const override;

 private:
  std::vector<std::vector<Hash>> m_levels;
  CompactRange m_edge;
};

}  // namespace keyline::core::merkle
