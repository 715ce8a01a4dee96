// PostgreSQL's own hash-partition routing, computed in the server (issue #20; docs/scale.md, "What the
// partitions cost a lookup"). On PostgreSQL 15 a lookup through the partitioned parent `records`
// locks all sixteen partitions before its generic plan prunes fifteen of them; a lookup that names
// the one partition itself costs what a lookup on one table costs. So the server computes the
// remainder PostgreSQL would and queries that partition, with the modulus and the partition names
// read from the catalog, never assumed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "keyline/core/pq.h"

namespace keyline::backupdb {

// The seed PostgreSQL hashes partition keys with (src/include/catalog/partition.h, HASH_PARTITION_SEED).
constexpr std::uint64_t kHashPartitionSeed = 0x7A5B22367996DCFDull;

// hash_bytes_extended of PostgreSQL 15 (src/common/hashfn.c): Bob Jenkins' lookup3 as PostgreSQL
// adapted it, 64 bits out (b << 32 | c), the seed mixed in first. As a little-endian server
// computes it: a big-endian one reads the words the other way round and puts rows elsewhere, which
// read_partition_layout's probe then notices.
std::uint64_t pg_hash_bytes_extended(std::string_view bytes, std::uint64_t seed);

// hash_combine64 (src/include/common/hashfn.h).
constexpr std::uint64_t pg_hash_combine64(std::uint64_t a, std::uint64_t b) {
  a ^= b + 0x49a0f4dd15e5a8e3ull + (a << 54) + (a >> 7);
  return a;
}

// The row hash PostgreSQL 15 routes a row by when the table is hash-partitioned by one text column
// of a deterministic collation (src/backend/partitioning/partbounds.c, compute_partition_hash_value):
// the column's extended hash function with the partition seed (hashtextextended, which for a
// deterministic collation hashes the bytes as they are), combined into a row hash that starts at 0.
inline std::uint64_t pg_text_partition_hash(std::string_view key) {
  return pg_hash_combine64(0, pg_hash_bytes_extended(key, kHashPartitionSeed));
}

// Where each remainder's rows live: names[r] is the partition FOR VALUES WITH (MODULUS n, REMAINDER r),
// n = names.size(). With every partition of one modulus, PostgreSQL's greatest modulus is n and a row
// goes to the partition of row hash % n (partbounds.c, get_partition_for_tuple).
class PartitionMap {
 public:
  PartitionMap() = default;  // none: lookups go through the parent table
  explicit PartitionMap(std::vector<std::string> names) : m_names(std::move(names)) {}

  bool empty() const { return m_names.empty(); }
  std::size_t modulus() const { return m_names.size(); }
  std::size_t remainder_of(std::string_view key) const {
    return pg_text_partition_hash(key) % m_names.size();
  }
  const std::string& partition_of(std::string_view key) const { return m_names[remainder_of(key)]; }
  const std::vector<std::string>& names() const { return m_names; }

 private:
  std::vector<std::string> m_names;
};

struct PartitionLayout {
  PartitionMap map;    // empty: use the parent table
  std::string reason;  // why the map is empty, for the log
};

// `table`'s partitions as the catalog has them (pg_partitioned_table, pg_inherits and each partition's
// bound). The map is empty, with the reason, unless the table is hash-partitioned by `column` alone (a
// text column, the default text hash operator class, a deterministic collation, no expression) into
// plain tables of one modulus, one for each remainder, the session's role may read each by its name
// (keyline-backupdb migrate grants it), and PostgreSQL agrees with this hash on a few probe keys
// (satisfies_hash_partition, the function behind each partition's constraint). Throws the DbError of
// a failed catalog query.
PartitionLayout read_partition_layout(core::pq::Connection& c, const std::string& table,
                                      const std::string& column);

}  // namespace keyline::backupdb
