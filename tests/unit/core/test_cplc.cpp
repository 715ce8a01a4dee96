#include <doctest/doctest.h>

#include <map>
#include <string>

#include "keyline/core/cplc.h"
#include "vector_file.h"

using namespace keyline::core;

TEST_CASE("CPLC known answer: GlobalPlatform library sample") {
  const auto vf = keyline::test::read_vectors("cplc_globalplatform.txt");
  CHECK(vf.source.find("globalplatform") != std::string::npos);
  std::map<std::string, std::string> f;
  for (const auto& row : vf.rows) {
    REQUIRE(row.size() == 2);
    f[row[0]] = row[1];
  }
  const Bytes tagged = from_hex(f.at("tagged"));
  REQUIRE(tagged.size() == 45);

  const Cplc c = Cplc::parse(tagged.data(), tagged.size());
  CHECK(c.ic_fabricator() == std::stoul(f.at("ic_fabricator"), nullptr, 16));
  CHECK(c.ic_type() == std::stoul(f.at("ic_type"), nullptr, 16));
  CHECK(c.ic_serial() == std::stoul(f.at("ic_serial"), nullptr, 16));
  CHECK(c.ic_batch() == std::stoul(f.at("ic_batch"), nullptr, 16));
  CHECK(c.ic_fabricator() == 0x4250);
  CHECK(c.ic_serial() == 0x0106D0BBu);
  CHECK(c.chip_id().str() == f.at("chip_id"));
  CHECK(c.chip_id().str() == "425032720106D0BB1D3C");
  CHECK(c.encode_tagged() == tagged);

  // The bare 42-byte value parses to the same CPLC.
  const Cplc bare = Cplc::parse(tagged.data() + 3, 42);
  CHECK(bare.raw == c.raw);

  // make() with the same four fields gives the same chip ID (other fields zero).
  const Cplc m = Cplc::make(0x4250, 0x3272, 0x0106D0BB, 0x1D3C);
  CHECK(m.chip_id() == c.chip_id());
  CHECK(m.raw[4] == 0);
  CHECK(m.raw[41] == 0);
  CHECK(Cplc::parse(m.encode_tagged().data(), 45).raw == m.raw);
}

TEST_CASE("CPLC: wrong sizes and wrong tag are BadCplc") {
  const Bytes good = Cplc::make(1, 2, 3, 4).encode_tagged();
  CHECK_THROWS_CODE(Cplc::parse(good.data(), 0), BadCplc);
  CHECK_THROWS_CODE(Cplc::parse(good.data(), 41), BadCplc);
  CHECK_THROWS_CODE(Cplc::parse(good.data(), 44), BadCplc);
  Bytes longer = good;
  longer.push_back(0);
  CHECK_THROWS_CODE(Cplc::parse(longer.data(), longer.size()), BadCplc);
  for (std::size_t i = 0; i < 3; ++i) {
    Bytes t = good;
    t[i] ^= 0x01;
    CHECK_THROWS_CODE(Cplc::parse(t.data(), t.size()), BadCplc);
  }
}

TEST_CASE("ChipId: text forms") {
  const ChipId id = ChipId::parse("425032720106d0bb1d3c");
  CHECK(id.str() == "425032720106D0BB1D3C");
  CHECK(id == ChipId::parse("425032720106D0BB1D3C"));
  CHECK(id != ChipId::parse("425032720106D0BB1D3D"));
  CHECK(ChipId::is_valid("425032720106D0BB1D3C"));
  CHECK_FALSE(ChipId::is_valid("425032720106d0bb1d3c"));  // stored form is upper case only
  CHECK_FALSE(ChipId::is_valid("425032720106D0BB1D3"));
  CHECK_FALSE(ChipId::is_valid("425032720106D0BB1D3C0"));
  CHECK_FALSE(ChipId::is_valid("425032720106D0BB1D3G"));
  CHECK_FALSE(ChipId::is_valid(""));
  for (const char* bad : {"", "425032720106D0BB1D3", "425032720106D0BB1D3C00", "425032720106D0BB1D3G",
                          "42 5032720106D0BB1D3C", "0x425032720106D0BB1D"}) {
    INFO(std::string(bad));
    CHECK_THROWS_CODE(ChipId::parse(bad), BadChipId);
  }
  const std::uint8_t ten[10] = {0x42, 0x50, 0x32, 0x72, 0x01, 0x06, 0xD0, 0xBB, 0x1D, 0x3C};
  CHECK(ChipId::from_bytes(ten, 10) == id);
  CHECK_THROWS_CODE(ChipId::from_bytes(ten, 9), BadChipId);
  CHECK_THROWS_CODE(ChipId::from_bytes(ten, 0), BadChipId);
}
