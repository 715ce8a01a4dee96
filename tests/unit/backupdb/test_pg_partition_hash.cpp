// PostgreSQL 15's hash-partition routing computed in the server (backupdb/src/pg_partition_hash.h),
// against answers from a real PostgreSQL 15.18 (x86_64): hashtextextended(key, seed) for the 64-bit
// hash with the partition seed and with none, and the partition PostgreSQL itself put each key in,
// for a table of 16 hash partitions (satisfies_hash_partition) and one of 7 (tableoid after INSERT).
// Keys of every length 0..13 (each tail length, one full 12-byte block) and the chip IDs' 20.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "pg_partition_hash.h"

using namespace keyline::backupdb;

namespace {

struct Known {
  const char* key;
  std::uint64_t seeded;    // hashtextextended(key, 8816678312871386365), as unsigned
  std::uint64_t unseeded;  // hashtextextended(key, 0)
  unsigned remainder16;
  unsigned remainder7;
};

// psql: SELECT k, hashtextextended(k, 8816678312871386365), hashtextextended(k, 0) ...; the remainders:
// the one of 0..15 for which satisfies_hash_partition('records', 16, r, k), and tableoid::regclass of
// each key inserted into a table PARTITION BY HASH (k) with MODULUS 7.
constexpr Known kKnown[] = {
    {"", 0xB0E33D0B543FBFC3ull, 0x9FB1B765A7EA466Dull, 6, 1},
    {"0", 0x0D8807BE6946EB26ull, 0x1F0320988A88FFECull, 9, 4},
    {"AB", 0xE5D120DC89113861ull, 0xF73FC7526F60CF46ull, 4, 0},
    {"ABC", 0x32D5CCFBCCB91AB8ull, 0x1006ED6266BAA1ECull, 11, 2},
    {"ABCD", 0xA168D218555666A3ull, 0x0B87E15114DB3957ull, 6, 2},
    {"ABCDE", 0x2B64D107EABCF9DCull, 0xB688EFA74157D467ull, 15, 6},
    {"ABCDEF", 0x67204A8D57FE4D9Aull, 0x9ACA3792211A5113ull, 13, 4},
    {"ABCDEFG", 0x1656EFDF9FD4F5FCull, 0x2BBE487A1742268Bull, 15, 2},
    {"ABCDEFGH", 0x3DE2C243CD5F1436ull, 0xD8ABA6FD4CA320BBull, 9, 6},
    {"ABCDEFGHI", 0x08269AAB1C49D83Cull, 0xD09ABA8C65E12906ull, 15, 0},
    {"ABCDEFGHIJ", 0x718062CCEEBC65C9ull, 0x3090CEC5143EF1AFull, 12, 0},
    {"ABCDEFGHIJK", 0xC283AAB25703AB4Eull, 0x1FFB7508C1F03C1Bull, 1, 1},
    {"ABCDEFGHIJKL", 0x0A7E6B233B2ED75Full, 0xA0BCCBA8F07EBE16ull, 2, 5},
    {"ABCDEFGHIJKLM", 0x4B3D006EBBCB0729ull, 0xA430F44B9C9FDE8Aull, 12, 3},
    {"00000000000000000007", 0xC2263E32E83BB484ull, 0x37E2D07270A8EDDEull, 7, 3},
    {"00000000000000000001", 0x63E3C865C530BA79ull, 0x422DFDA3896067A3ull, 12, 5},
    {"FFFFFFFFFFFFFFFFFFFF", 0xB034312E735E3D1Full, 0x376CB9D920A29D40ull, 2, 2},
    {"4090123456789ABCDEF0", 0x98660FF38A1852ABull, 0x3419972F4ACAC44Bull, 14, 6},
    {"F0000001000000000000", 0x3D8A629D5DA65ED3ull, 0x7214A4FFADC94B9Bull, 6, 2},
    {"0123456789ABCDEF0123456789ABCDEF", 0xD5AEB71B61265D3Cull, 0x3D6267D428B046AAull, 15, 6},
};

std::vector<std::string> names(unsigned n) {
  std::vector<std::string> out;
  for (unsigned i = 0; i < n; ++i) out.push_back("p" + std::to_string(i));
  return out;
}

}  // namespace

TEST_CASE("hash_bytes_extended with and without a seed, as PostgreSQL 15 computes it") {
  for (const auto& k : kKnown) {
    INFO("key '" << k.key << "'");
    CHECK(pg_hash_bytes_extended(k.key, kHashPartitionSeed) == k.seeded);
    CHECK(pg_hash_bytes_extended(k.key, 0) == k.unseeded);
  }
}

TEST_CASE("a key at any alignment hashes the same (PostgreSQL reads aligned words, the server bytes)") {
  const std::string chip = "4090123456789ABCDEF0";
  for (std::size_t offset = 0; offset < 8; ++offset) {
    const std::string buf = std::string(offset, 'x') + chip;
    CHECK(pg_hash_bytes_extended(std::string_view(buf).substr(offset), kHashPartitionSeed) ==
          0x98660FF38A1852ABull);
  }
}

TEST_CASE("the partition of a key: the row hash modulo the modulus, as PostgreSQL routed each") {
  const PartitionMap sixteen(names(16)), seven(names(7));
  for (const auto& k : kKnown) {
    INFO("key '" << k.key << "'");
    CHECK(pg_text_partition_hash(k.key) == pg_hash_combine64(0, k.seeded));
    CHECK(sixteen.remainder_of(k.key) == k.remainder16);
    CHECK(sixteen.partition_of(k.key) == "p" + std::to_string(k.remainder16));
    CHECK(seven.remainder_of(k.key) == k.remainder7);
  }
  // hash_combine64 from 0 adds its constant; from another value it mixes that in too.
  CHECK(pg_hash_combine64(0, 1) == 0x49a0f4dd15e5a8e4ull);
  CHECK(pg_hash_combine64(1, 0) == (1ull ^ (0x49a0f4dd15e5a8e3ull + (1ull << 54))));
}

TEST_CASE("no partitions: an empty map") {
  const PartitionMap none;
  CHECK(none.empty());
  CHECK(none.modulus() == 0);
}
