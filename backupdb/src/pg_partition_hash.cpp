#include "pg_partition_hash.h"

#include <cstdio>

namespace keyline::backupdb {
namespace {

// lookup3's mixing steps as PostgreSQL 15 has them (src/common/hashfn.c, mix() and final()).
constexpr std::uint32_t rotl(std::uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

void mix(std::uint32_t& a, std::uint32_t& b, std::uint32_t& c) {
  a -= c, a ^= rotl(c, 4), c += b;
  b -= a, b ^= rotl(a, 6), a += c;
  c -= b, c ^= rotl(b, 8), b += a;
  a -= c, a ^= rotl(c, 16), c += b;
  b -= a, b ^= rotl(a, 19), a += c;
  c -= b, c ^= rotl(b, 4), b += a;
}

void final_mix(std::uint32_t& a, std::uint32_t& b, std::uint32_t& c) {
  c ^= b, c -= rotl(b, 14);
  a ^= c, a -= rotl(c, 11);
  b ^= a, b -= rotl(a, 25);
  c ^= b, c -= rotl(b, 16);
  a ^= c, a -= rotl(c, 4);
  b ^= a, b -= rotl(a, 14);
  c ^= b, c -= rotl(b, 24);
}

std::uint32_t load_le32(const unsigned char* p) {
  return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
         std::uint32_t{p[3]} << 24;
}

// Keys of the chip IDs' shape (the only keys looked up), checked against the server's own routing
// at startup. Eight, so a hash that is wrong for them all but agrees by chance is a 16^-8 event.
constexpr const char* kProbeKeys[] = {"00000000000000000000", "FFFFFFFFFFFFFFFFFFFF", "0123456789ABCDEF0123",
                                      "4090000000000000000A", "F0000001000000000000", "00000000000000000007",
                                      "8000000000000000F00D", "ABCDEFABCDEFABCDEF01"};

bool parse_hash_bound(const std::string& bound, unsigned& modulus, unsigned& remainder) {
  int end = -1;
  const int got =
      std::sscanf(bound.c_str(), "FOR VALUES WITH (modulus %u, remainder %u)%n", &modulus, &remainder, &end);
  return got == 2 && end == static_cast<int>(bound.size());
}

PartitionLayout none(std::string reason) {
  PartitionLayout l;
  l.reason = std::move(reason);
  return l;
}

}  // namespace

std::uint64_t pg_hash_bytes_extended(std::string_view bytes, std::uint64_t seed) {
  const auto* k = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t len = bytes.size();
  std::uint32_t a = 0x9e3779b9u + static_cast<std::uint32_t>(len) + 3923095u;
  std::uint32_t b = a;
  std::uint32_t c = a;
  // The seed counts as a first 12-byte block of its high word, low word and four zero bytes.
  if (seed != 0) {
    a += static_cast<std::uint32_t>(seed >> 32);
    b += static_cast<std::uint32_t>(seed);
    mix(a, b, c);
  }
  for (; len >= 12; k += 12, len -= 12) {
    a += load_le32(k);
    b += load_le32(k + 4);
    c += load_le32(k + 8);
    mix(a, b, c);
  }
  // The last 0..11 bytes, little-endian into a, b and c; c's lowest byte is left to the length (as
  // lookup3 does), so its bytes go one place higher. Unlike lookup3, the final mix runs for an
  // empty tail too.
  std::uint32_t tail[3] = {0, 0, 0};
  for (std::size_t i = 0; i < len; ++i)
    tail[i / 4] += std::uint32_t{k[i]} << (8 * (i % 4 + (i >= 8 ? 1 : 0)));
  a += tail[0];
  b += tail[1];
  c += tail[2];
  final_mix(a, b, c);
  return std::uint64_t{b} << 32 | c;
}

PartitionLayout read_partition_layout(core::pq::Connection& c, const std::string& table,
                                      const std::string& column) {
  // The partition key: its strategy, column, type, operator class and collation. No row when the table
  // is not partitioned (the records before 0005) or does not exist.
  const auto key = c.exec(
      "SELECT pt.partstrat, pt.partnatts, coalesce(a.attname, ''), a.atttypid = 'text'::regtype, "
      "coalesce(am.amname = 'hash' AND opc.opcname = 'text_ops' AND opc.opcdefault "
      "AND opc.opcnamespace = 'pg_catalog'::regnamespace, false), coalesce(co.collisdeterministic, false) "
      "FROM pg_partitioned_table pt "
      "LEFT JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0] "
      "LEFT JOIN pg_opclass opc ON opc.oid = pt.partclass[0] LEFT JOIN pg_am am ON am.oid = opc.opcmethod "
      "LEFT JOIN pg_collation co ON co.oid = pt.partcollation[0] "
      "WHERE pt.partrelid = to_regclass($1)",
      {table});
  if (key.empty()) return none(table + " is not partitioned");
  if (key.text(0, 0) != "h" || key.text(0, 1) != "1" || key.text(0, 2) != column)
    return none(table + " is not hash-partitioned by " + column + " alone");
  if (key.text(0, 3) != "t" || key.text(0, 4) != "t" || key.text(0, 5) != "t")
    return none(table +
                "'s key is not text with the default hash operator class and a deterministic collation");

  // regclass output is each name as SQL wants it (quoted when it must be, schema-qualified when not on
  // the search path), so the lookups can name the partition in their text.
  const auto parts = c.exec(
      "SELECT ch.oid::regclass::text, ch.relkind, coalesce(pg_get_expr(ch.relpartbound, ch.oid), ''), "
      "has_table_privilege(ch.oid, 'SELECT') "
      "FROM pg_inherits i JOIN pg_class ch ON ch.oid = i.inhrelid WHERE i.inhparent = to_regclass($1)",
      {table});
  if (parts.empty()) return none(table + " has no partitions");
  std::vector<std::string> names;
  for (int i = 0; i < parts.rows(); ++i) {
    unsigned modulus = 0, remainder = 0;
    if (parts.text(i, 1) != "r") return none(parts.text(i, 0) + " is partitioned itself");
    // SELECT on the parent does not extend to its partitions read by name.
    if (parts.text(i, 3) != "t") return none("this role may not read " + parts.text(i, 0) + " by its name");
    if (!parse_hash_bound(parts.text(i, 2), modulus, remainder))
      return none(parts.text(i, 0) + " has the bound '" + parts.text(i, 2) + "'");
    // Mixed moduli route through the greatest one and a remainder table; not worth the code while
    // the one migration that made them (0005) uses one modulus.
    if (static_cast<long>(modulus) != parts.rows() || (!names.empty() && modulus != names.size()))
      return none(table + "'s partitions are not of one modulus, one for each remainder");
    if (names.empty()) names.resize(modulus);
    if (remainder >= modulus || !names[remainder].empty())
      return none(table + " has remainder " + std::to_string(remainder) + " twice");
    names[remainder] = parts.text(i, 0);
  }

  PartitionMap map(std::move(names));
  std::string keys = "{", remainders = "{";
  for (const char* k : kProbeKeys) {
    keys += std::string(keys.size() > 1 ? "," : "") + k;
    remainders += (remainders.size() > 1 ? "," : "") + std::to_string(map.remainder_of(k));
  }
  keys += '}';
  remainders += '}';
  const auto probe = c.exec(
      "SELECT count(*) FILTER (WHERE NOT satisfies_hash_partition(to_regclass($1)::oid, $2::int, p.r, p.k)) "
      "FROM unnest($3::text[], $4::int[]) AS p(k, r)",
      {table, static_cast<std::int64_t>(map.modulus()), keys, remainders});
  if (probe.int64(0, 0) != 0)
    return none("PostgreSQL puts " + std::to_string(probe.int64(0, 0)) + " of " +
                std::to_string(std::size(kProbeKeys)) + " probe keys in another partition than this hash");
  PartitionLayout layout;
  layout.map = std::move(map);
  return layout;
}

}  // namespace keyline::backupdb
