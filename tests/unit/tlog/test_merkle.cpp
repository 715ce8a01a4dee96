// RFC 9162 section 2.1 hashing and proofs against transparency-dev/merkle's known answers
// (tests/vectors/merkle/README.md names the source), plus generator/verifier agreement over every
// small tree and hostile arguments at the edges of uint64.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include "keyline/core/error.h"
#include "keyline/core/merkle.h"
#include "testenv.h"
#include "tlog_test_util.h"
#include "vector_file.h"  // CHECK_THROWS_CODE

using namespace keyline::core;
using namespace keyline::core::merkle;
using keyline::test::tlog::read_text;

namespace {

const std::string vectors_dir() { return keyline::test::source_dir() + "/tests/vectors/merkle"; }

// rfc6962_tree.txt: "key = value" lines of lower-case hex.
std::map<std::string, Bytes> tree_values() {
  std::istringstream in(read_text(vectors_dir() + "/rfc6962_tree.txt"));
  std::map<std::string, Bytes> out;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find('=');
    REQUIRE(eq != std::string::npos);
    auto trim = [](std::string s) {
      s.erase(0, s.find_first_not_of(' '));
      s.erase(s.find_last_not_of(' ') + 1);
      return s;
    };
    out[trim(line.substr(0, eq))] = from_hex(trim(line.substr(eq + 1)));
  }
  return out;
}

Hash h(const Bytes& b) {
  const auto x = to_hash(b);
  REQUIRE(x.has_value());
  return *x;
}

MemoryTree eight_leaf_tree() {
  const auto v = tree_values();
  MemoryTree t;
  for (int i = 0; i < 8; ++i) t.append(leaf_hash(v.at("leaf_input." + std::to_string(i))));
  return t;
}

struct Probe {
  std::string file;
  Poco::JSON::Object::Ptr json;
  std::uint64_t u64(const std::string& k) const { return json->get(k).convert<Poco::UInt64>(); }
  Bytes b64(const std::string& k) const { return from_base64(json->getValue<std::string>(k)); }
  bool want_err() const { return json->getValue<bool>("wantErr"); }
  std::vector<Bytes> proof() const {
    std::vector<Bytes> out;
    if (json->isNull("proof")) return out;
    for (const auto& e : *json->getArray("proof")) out.push_back(from_base64(e.convert<std::string>()));
    return out;
  }
};

std::vector<Probe> probes(const std::string& kind) {
  std::vector<Probe> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(vectors_dir() + "/" + kind)) {
    if (!e.is_regular_file() || e.path().extension() != ".json") continue;
    Poco::JSON::Parser parser;
    const auto obj = parser.parse(read_text(e.path().string())).extract<Poco::JSON::Object::Ptr>();
    out.push_back({e.path().lexically_relative(vectors_dir()).string(), obj});
  }
  return out;
}

// MTH straight from RFC 9162 section 2.1.1's definition, independent of the library's recursion.
Hash naive_mth(const std::vector<Hash>& leaves, std::size_t b, std::size_t e) {
  if (e == b) return empty_root();
  if (e - b == 1) return leaves[b];
  std::size_t k = 1;
  while (k * 2 < e - b) k *= 2;
  return node_hash(naive_mth(leaves, b, b + k), naive_mth(leaves, b + k, e));
}

std::vector<Bytes> as_bytes(const std::vector<Hash>& p) {
  std::vector<Bytes> out;
  for (const auto& x : p) out.push_back(to_bytes(x));
  return out;
}

// Counts lookups, to show a proof costs O(log^2 n) of them and never a rebuild.
class CountingSource : public HashSource {
 public:
  explicit CountingSource(const HashSource& inner) : m_inner(inner) {}
  Hash subtree(unsigned level, std::uint64_t index) const override {
    ++m_count;
    return m_inner.subtree(level, index);
  }
  std::size_t count() const { return m_count; }

 private:
  const HashSource& m_inner;
  mutable std::size_t m_count = 0;
};

}  // namespace

TEST_CASE("RFC 6962 leaf, node and root hashes equal rfc6962_tree.txt") {
  const auto v = tree_values();
  CHECK(to_bytes(empty_root()) == v.at("root.0"));
  int nodes = 0;
  for (int i = 0; i < 8; ++i) {
    CHECK(to_bytes(leaf_hash(v.at("leaf_input." + std::to_string(i)))) == v.at("node.0." + std::to_string(i)));
    ++nodes;
  }
  for (int level = 1; level <= 3; ++level)
    for (int i = 0; i < (8 >> level); ++i) {
      const auto l = h(v.at("node." + std::to_string(level - 1) + "." + std::to_string(2 * i)));
      const auto r = h(v.at("node." + std::to_string(level - 1) + "." + std::to_string(2 * i + 1)));
      CHECK(to_bytes(node_hash(l, r)) == v.at("node." + std::to_string(level) + "." + std::to_string(i)));
      ++nodes;
    }
  CHECK(nodes == 15);
  const MemoryTree full = eight_leaf_tree();
  MemoryTree growing;
  for (int n = 0; n <= 8; ++n) {
    INFO("size " << n);
    CHECK(to_bytes(growing.root()) == v.at("root." + std::to_string(n)));
    CHECK(to_bytes(tree_root(full, n)) == v.at("root." + std::to_string(n)));
    if (n < 8) growing.append(full.subtree(0, n));
  }
}

TEST_CASE("every inclusion probe: wantErr false verifies, wantErr true fails") {
  const auto all = probes("inclusion");
  int pass = 0, fail = 0;
  for (const auto& p : all) {
    INFO(p.file);
    const bool ok = inclusion_valid(p.u64("leafIdx"), p.u64("treeSize"), p.b64("leafHash"), p.proof(), p.b64("root"));
    CHECK(ok == !p.want_err());
    (ok ? pass : fail)++;
    if (!p.want_err())
      CHECK_NOTHROW(verify_inclusion(p.u64("leafIdx"), p.u64("treeSize"), p.b64("leafHash"), p.proof(), p.b64("root")));
    else
      CHECK_THROWS_CODE(verify_inclusion(p.u64("leafIdx"), p.u64("treeSize"), p.b64("leafHash"), p.proof(), p.b64("root")),
                        BadProof);
  }
  CHECK(all.size() == 86);  // README: 86 inclusion probes, 6 of them happy (folders 0-4 and single-entry)
  CHECK(pass == 6);
}

TEST_CASE("every consistency probe: wantErr false verifies, wantErr true fails") {
  const auto all = probes("consistency");
  int pass = 0;
  for (const auto& p : all) {
    INFO(p.file);
    const bool ok = consistency_valid(p.u64("size1"), p.u64("size2"), p.proof(), p.b64("root1"), p.b64("root2"));
    CHECK(ok == !p.want_err());
    if (ok) ++pass;
  }
  CHECK(all.size() == 84);
  CHECK(pass == 5);
}

TEST_CASE("proofs generated over the 8-leaf tree equal the happy-path proofs") {
  const MemoryTree tree = eight_leaf_tree();
  const auto v = tree_values();
  int checked = 0;
  for (const auto& p : probes("inclusion")) {
    if (p.file.find("happy-path") == std::string::npos || p.file.find("single-entry") != std::string::npos) continue;
    INFO(p.file);
    const auto idx = p.u64("leafIdx"), size = p.u64("treeSize");
    CHECK(as_bytes(inclusion_proof(tree, idx, size)) == p.proof());
    CHECK(p.b64("leafHash") == v.at("node.0." + std::to_string(idx)));
    CHECK(to_bytes(tree_root(tree, size)) == p.b64("root"));
    ++checked;
  }
  for (const auto& p : probes("consistency")) {
    if (p.file.find("happy-path") == std::string::npos) continue;
    INFO(p.file);
    const auto s1 = p.u64("size1"), s2 = p.u64("size2");
    CHECK(as_bytes(consistency_proof(tree, s1, s2)) == p.proof());
    CHECK(to_bytes(tree_root(tree, s1)) == p.b64("root1"));
    CHECK(to_bytes(tree_root(tree, s2)) == p.b64("root2"));
    ++checked;
  }
  CHECK(checked == 10);
}

TEST_CASE("generator and verifier agree on every tree up to 70 leaves, and mutations fail") {
  MemoryTree tree;
  std::vector<Hash> leaves;
  for (std::uint64_t n = 1; n <= 70; ++n) {
    const Bytes input{static_cast<std::uint8_t>(n), 0x4b};
    leaves.push_back(leaf_hash(input));
    tree.append(leaves.back());
    const Hash root = naive_mth(leaves, 0, n);
    REQUIRE(tree.root() == root);
    REQUIRE(tree_root(tree, n) == root);
    for (std::uint64_t i = 0; i < n; ++i) {
      INFO("inclusion " << i << " of " << n);
      auto proof = as_bytes(inclusion_proof(tree, i, n));
      REQUIRE(inclusion_valid(i, n, to_bytes(leaves[i]), proof, to_bytes(root)));
      CHECK_FALSE(inclusion_valid(n, n, to_bytes(leaves[i]), proof, to_bytes(root)));
      CHECK_FALSE(inclusion_valid(i, n, to_bytes(leaves[i]), proof, to_bytes(naive_mth(leaves, 0, n - 1))));
      if (n > 1) CHECK_FALSE(inclusion_valid((i + 1) % n, n, to_bytes(leaves[i]), proof, to_bytes(root)));
      for (auto& e : proof) {
        e[7] ^= 0x10;
        CHECK_FALSE(inclusion_valid(i, n, to_bytes(leaves[i]), proof, to_bytes(root)));
        e[7] ^= 0x10;
      }
    }
    for (std::uint64_t m = 1; m <= n; ++m) {
      INFO("consistency " << m << " to " << n);
      const Hash root1 = naive_mth(leaves, 0, m);
      auto proof = as_bytes(consistency_proof(tree, m, n));
      REQUIRE(consistency_valid(m, n, proof, to_bytes(root1), to_bytes(root)));
      if (m < n) CHECK_FALSE(consistency_valid(m + 1, n, proof, to_bytes(naive_mth(leaves, 0, m + 1)), to_bytes(root)));
      for (auto& e : proof) {
        e[0] ^= 0x01;
        CHECK_FALSE(consistency_valid(m, n, proof, to_bytes(root1), to_bytes(root)));
        e[0] ^= 0x01;
      }
    }
  }
}

TEST_CASE("a million leaves: proofs come from stored subtree hashes, O(log^2 n) lookups") {
  MemoryTree tree;
  const std::uint64_t n = 1000000;
  for (std::uint64_t i = 0; i < n; ++i) {
    Bytes input(8);
    for (int b = 0; b < 8; ++b) input[b] = static_cast<std::uint8_t>(i >> (8 * b));
    tree.append(leaf_hash(input));
  }
  const Hash root = tree.root();
  for (std::uint64_t idx : {std::uint64_t{0}, std::uint64_t{123456}, n - 1}) {
    CountingSource counted(tree);
    const auto proof = inclusion_proof(counted, idx, n);
    CHECK(counted.count() <= 20 * 21);
    CHECK(proof.size() <= 20);
    CHECK(proof.size() >= 7);
    CHECK(inclusion_valid(idx, n, to_bytes(tree.subtree(0, idx)), as_bytes(proof), to_bytes(root)));
  }
  CountingSource counted(tree);
  const auto cproof = consistency_proof(counted, 999999, n);
  CHECK(counted.count() <= 21 * 21);
  CHECK(consistency_valid(999999, n, as_bytes(cproof), to_bytes(tree_root(tree, 999999)), to_bytes(root)));
  const auto edge = CompactRange::load(tree, n);
  CHECK(edge.root() == root);
  CHECK(edge.edge().size() == 7);  // 1000000 has 7 set bits
}

TEST_CASE("the compact range appends like the whole tree, also after loading its edge") {
  MemoryTree tree;
  for (std::uint64_t n = 0; n < 300; ++n) {
    CompactRange r = CompactRange::load(tree, n);
    CHECK(r.root() == tree.root());
    const Hash next = leaf_hash(Bytes{static_cast<std::uint8_t>(n), static_cast<std::uint8_t>(n >> 8)});
    std::vector<std::pair<unsigned, std::uint64_t>> completed;
    r.append(next, [&](unsigned level, std::uint64_t index, const Hash&) { completed.emplace_back(level, index); });
    tree.append(next);
    CHECK(r.root() == tree.root());
    REQUIRE(!completed.empty());
    CHECK(completed.front() == std::make_pair(0u, n));
    // n + 1 leaves complete one subtree per trailing one bit of n, plus the leaf itself.
    std::size_t ones = 0;
    while (((n >> ones) & 1) != 0) ++ones;
    CHECK(completed.size() == ones + 1);
  }
}

TEST_CASE("hostile proof arguments fail without crashing") {
  const Bytes h32(32, 0xab), h31(31, 0xab), h33(33, 0xab);
  const auto max = std::numeric_limits<std::uint64_t>::max();
  std::vector<Bytes> long_proof(64, h32);
  CHECK_THROWS_CODE(verify_inclusion(0, 0, h32, {}, h32), BadProof);
  CHECK_THROWS_CODE(verify_inclusion(max, max, h32, {}, h32), BadProof);
  CHECK_FALSE(inclusion_valid(max - 1, max, h32, long_proof, h32));
  CHECK_FALSE(inclusion_valid(0, 1, h31, {}, h31));
  CHECK_FALSE(inclusion_valid(0, 1, h33, {}, h33));
  CHECK_FALSE(inclusion_valid(0, 2, h32, {h31}, h32));
  CHECK_FALSE(inclusion_valid(0, 2, h32, std::vector<Bytes>(65, h32), h32));
  CHECK_FALSE(inclusion_valid(0, 1, h32, {h32}, h32));  // a proof for a one-leaf tree is empty
  CHECK(inclusion_valid(0, 1, h32, {}, h32));
  CHECK_FALSE(consistency_valid(0, 0, {}, h32, h32));  // h32 is not MTH({})
  CHECK(consistency_valid(0, 0, {}, to_bytes(empty_root()), to_bytes(empty_root())));
  CHECK(consistency_valid(0, 5, {}, to_bytes(empty_root()), h32));
  CHECK_FALSE(consistency_valid(0, 5, {h32}, to_bytes(empty_root()), h32));
  CHECK_FALSE(consistency_valid(2, 1, {h32}, h32, h32));
  CHECK_FALSE(consistency_valid(3, 3, {h32}, h32, h32));
  CHECK_FALSE(consistency_valid(3, 4, {}, h32, h32));
  CHECK_FALSE(consistency_valid(max / 2 + 1, max, long_proof, h32, h32));
  CHECK_FALSE(consistency_valid(1, max, std::vector<Bytes>(129, h32), h32, h32));
  CHECK_FALSE(consistency_valid(3, 7, {h32, h31}, h32, h32));
  MemoryTree small;
  small.append(leaf_hash(Bytes{}));
  CHECK_THROWS_CODE(inclusion_proof(small, 1, 1), BadProof);
  CHECK_THROWS_CODE(consistency_proof(small, 2, 1), BadProof);
  CHECK_THROWS_CODE(inclusion_proof(small, 0, 2), BadProof);  // the store has no leaf 1
  CHECK(consistency_proof(small, 0, 1).empty());
  CHECK(split_point(std::numeric_limits<std::uint64_t>::max()) == (std::uint64_t{1} << 63));
  CHECK(split_point(2) == 1);
  CHECK(split_point(5) == 4);
}
