// C2SP tlog-tiles: the examples in the spec text (index 1234067 as x001/x234/067, the tiles of trees
// of 70,000 and 256 leaves), tiles built while appending equal tiles read from the whole tree,
// proofs and roots from tiles, resuming, and the monitor's recomputation finding a changed tile.
#include <doctest/doctest.h>

#include <map>

#include "keyline/core/error.h"
#include "keyline/core/merkle.h"
#include "keyline/core/tlog_tiles.h"
#include "vector_file.h"  // CHECK_THROWS_CODE

using namespace keyline::core;
using namespace keyline::core::tlog;
using merkle::Hash;

namespace {

Bytes entry(std::uint64_t i) { return Bytes{'e', static_cast<std::uint8_t>(i), static_cast<std::uint8_t>(i >> 8), static_cast<std::uint8_t>(i >> 16)}; }

// A log as a later session will keep one: entries appended, full tiles stored once, partial tiles
// rewritten at each checkpoint, entry bundles beside them.
struct TileLog {
  std::map<std::string, Bytes> files;
  merkle::CompactRange range;
  TileBuilder builder;
  std::vector<Bytes> bundle;
  merkle::MemoryTree tree;

  void append(std::uint64_t n) {
    for (std::uint64_t k = 0; k < n; ++k) {
      const std::uint64_t i = range.size();
      bundle.push_back(entry(i));
      range.append(merkle::leaf_hash(bundle.back()), builder.visitor());
      tree.append(merkle::leaf_hash(bundle.back()));
      if (bundle.size() == 256) {
        files[tile_path({0, i / 256, 256, true})] = encode_entry_bundle(bundle);
        bundle.clear();
      }
    }
    for (auto& [id, data] : builder.take_full()) files[tile_path(id)] = data;
    for (auto& [id, data] : builder.partial()) files[tile_path(id)] = data;
    if (!bundle.empty())
      files[tile_path({0, range.size() / 256, static_cast<unsigned>(bundle.size()), true})] = encode_entry_bundle(bundle);
  }
  TileReader reader() const {
    return [this](const TileId& id) {
      const auto it = files.find(tile_path(id));
      if (it == files.end()) throw IoError(ErrorCode::Io, "no " + tile_path(id));
      return it->second;
    };
  }
};

}  // namespace

TEST_CASE("tile paths: the spec's example, partial tiles, entry bundles, strict parsing") {
  CHECK(tile_path({0, 1234067, 256, false}) == "tile/0/x001/x234/067");
  CHECK(tile_path({2, 0, 256, false}) == "tile/2/000");
  CHECK(tile_path({0, 1000, 256, false}) == "tile/0/x001/000");
  CHECK(tile_path({1, 5, 17, false}) == "tile/1/005.p/17");
  CHECK(tile_path({0, 273, 112, true}) == "tile/entries/273.p/112");
  CHECK(tile_path({0, UINT64_MAX, 1, true}) == "tile/entries/x018/x446/x744/x073/x709/x551/615.p/1");
  for (const TileId id : {TileId{0, 1234067, 256, false}, TileId{63, 0, 1, false}, TileId{0, 999, 255, true},
                          TileId{0, UINT64_MAX, 256, true}, TileId{7, 1000000, 3, false}}) {
    INFO(tile_path(id));
    CHECK(parse_tile_path(tile_path(id)) == id);
  }
  for (const std::string& bad : std::vector<std::string>{
           "tile/0/1234067", "tile/00/000", "tile/64/000", "tile/0/x000/001", "tile/0/001/x002", "tile/0/000.p/0",
           "tile/0/000.p/256", "tile/0/000.p/05", "tile/0/00", "tile/0/0000", "tile/0/x001/", "tile/0/x001",
           "tile/entries/000.p/", "tile/-1/000", "tile/0/000/", "tile/0/000.p/1/", "tile/x/000", "tile//000",
           "tile/0/x018/x446/x744/x073/x709/x551/616", "tile/0/x1000/000", "tile/0/00a", "tiles/0/000",
           "tile/entry/000", "tile/0/000.p/1x", "", "tile/0", "tile/0/"}) {
    INFO(bad);
    CHECK_THROWS_CODE(parse_tile_path(bad), BadTile);
  }
}

TEST_CASE("the spec's tile counts for trees of 70,000 and 256 leaves") {
  const auto t = tiles_for_size(70000);
  std::map<unsigned, std::pair<int, std::vector<unsigned>>> per_level;  // full count, partial widths
  for (const auto& id : t) {
    if (id.partial()) per_level[id.level].second.push_back(id.width);
    else ++per_level[id.level].first;
  }
  CHECK(per_level.size() == 3);
  CHECK(per_level[0].first == 273);
  CHECK(per_level[0].second == std::vector<unsigned>{112});
  CHECK(per_level[1].first == 1);
  CHECK(per_level[1].second == std::vector<unsigned>{17});
  CHECK(per_level[2].first == 0);
  CHECK(per_level[2].second == std::vector<unsigned>{1});
  CHECK(partial_tiles(70000) == std::vector<TileId>{{0, 273, 112, false}, {1, 1, 17, false}, {2, 0, 1, false}});
  CHECK(tiles_for_size(256) == std::vector<TileId>{{0, 0, 256, false}, {1, 0, 1, false}});
  CHECK(tiles_for_size(0).empty());
  CHECK(full_tiles(7, UINT64_MAX) == 0);
  CHECK(partial_width(7, UINT64_MAX) == 255);
  CHECK_THROWS_CODE(tiles_for_size(UINT64_MAX), BadTile);
}

TEST_CASE("hand-checkable tile contents: 3 leaves, 256 leaves") {
  TileLog log;
  log.append(3);
  const Bytes t = log.files.at("tile/0/000.p/3");
  Bytes want;
  for (int i = 0; i < 3; ++i) {
    const auto h = merkle::leaf_hash(entry(i));
    want.insert(want.end(), h.begin(), h.end());
  }
  CHECK(t == want);
  CHECK(log.files.at("tile/entries/000.p/3") == Bytes{0, 4, 'e', 0, 0, 0, 0, 4, 'e', 1, 0, 0, 0, 4, 'e', 2, 0, 0});
  log.append(253);
  CHECK(log.files.at("tile/0/000").size() == 8192);
  // The level-1 tile of width 1 holds the MTH of the first full level-0 tile: the root at 256.
  CHECK(log.files.at("tile/1/000.p/1") == merkle::to_bytes(log.tree.root()));
}

TEST_CASE("70,000 leaves: tiles, roots and proofs from tiles equal the whole tree's") {
  TileLog log;
  log.append(70000);
  for (const auto& id : tiles_for_size(70000)) {
    INFO(tile_path(id));
    REQUIRE(log.files.count(tile_path(id)) == 1);
    CHECK(log.files.at(tile_path(id)) == tile_data(log.tree, id));
  }
  const TileHashSource tiles(log.reader(), 70000);
  CHECK(merkle::tree_root(tiles, 70000) == log.tree.root());
  for (std::uint64_t i : {std::uint64_t{0}, std::uint64_t{255}, std::uint64_t{256}, std::uint64_t{65535},
                          std::uint64_t{69887}, std::uint64_t{69999}}) {
    INFO(i);
    CHECK(merkle::inclusion_proof(tiles, i, 70000) == merkle::inclusion_proof(log.tree, i, 70000));
  }
  for (std::uint64_t m : {std::uint64_t{1}, std::uint64_t{256}, std::uint64_t{4097}, std::uint64_t{69999}})
    CHECK(merkle::consistency_proof(tiles, m, 70000) == merkle::consistency_proof(log.tree, m, 70000));
  CHECK(tiles.tiles_read() < 20);  // a proof reads a handful of tiles, not the tree
  CHECK(verify_tiles(log.reader(), 70000, false) == log.tree.root());
  CHECK(verify_tiles(log.reader(), 70000, true) == log.tree.root());
  CHECK_THROWS_CODE(tiles.subtree(17, 0), BadTile);  // 2^17 leaves are not in the tree yet
  CHECK_THROWS_CODE(tiles.subtree(0, 70000), BadTile);
  CHECK_THROWS_CODE(tiles.subtree(64, 0), BadTile);
}

TEST_CASE("the monitor's recomputation finds a changed, short or swapped tile") {
  TileLog log;
  log.append(70000);
  const Hash root = log.tree.root();
  auto tampered = [&](const std::string& path, auto change, bool from_entries) {
    TileLog copy = log;
    change(copy.files.at(path));
    INFO(path);
    CHECK_THROWS_CODE(verify_tiles(copy.reader(), 70000, from_entries), BadTile);
  };
  auto flip = [](Bytes& b) { b[b.size() / 2] ^= 1; };
  auto cut = [](Bytes& b) { b.pop_back(); };
  tampered("tile/0/010", flip, false);        // level 0 no longer hashes to level 1's hash
  tampered("tile/1/000", flip, false);
  tampered("tile/1/001.p/17", flip, false);
  tampered("tile/2/000.p/1", flip, false);
  tampered("tile/0/273.p/112", cut, false);
  tampered("tile/entries/005", flip, true);   // an entry changed: level 0 differs
  tampered("tile/entries/005", cut, true);
  tampered("tile/entries/273.p/112", [](Bytes& b) { b.push_back(0); }, true);
  // A changed level-0 tile is what the tree is recomputed from, so only the root shows it.
  TileLog other = log;
  other.files.at("tile/0/273.p/112")[0] ^= 1;
  CHECK(verify_tiles(other.reader(), 70000, false) != root);
}

TEST_CASE("a builder resumed from stored partial tiles continues as if it never stopped") {
  TileLog log;
  log.append(70000);
  TileLog resumed;
  resumed.files = log.files;
  resumed.tree = log.tree;
  resumed.builder = TileBuilder(70000, log.reader());
  resumed.range = merkle::CompactRange::load(TileHashSource(log.reader(), 70000), 70000);
  for (std::uint64_t i = 69888; i < 70000; ++i) resumed.bundle.push_back(entry(i));
  resumed.append(1500);
  log.append(1500);
  CHECK(resumed.range.root() == log.range.root());
  CHECK(resumed.files == log.files);
  CHECK(verify_tiles(resumed.reader(), 71500, true) == log.tree.root());
  auto short_reader = [&](const TileId& id) {
    Bytes b = log.reader()(id);
    b.resize(b.size() - 32);
    return b;
  };
  CHECK_THROWS_CODE(TileBuilder(70000, short_reader), BadTile);
}

TEST_CASE("entry bundles: length prefixes, exact width, limits") {
  const std::vector<Bytes> entries{{}, {'a', 'b'}, Bytes(max_entry_bytes, 7)};
  const Bytes b = encode_entry_bundle(entries);
  CHECK(b.size() == 2 + 4 + 2 + max_entry_bytes);
  CHECK(parse_entry_bundle(b, 3) == entries);
  CHECK_THROWS_CODE(parse_entry_bundle(b, 2), BadTile);
  CHECK_THROWS_CODE(parse_entry_bundle(b, 4), BadTile);
  Bytes cut = b;
  cut.pop_back();
  CHECK_THROWS_CODE(parse_entry_bundle(cut, 3), BadTile);
  CHECK_THROWS_CODE(parse_entry_bundle(Bytes{0}, 1), BadTile);
  CHECK_THROWS_CODE(encode_entry_bundle({Bytes(max_entry_bytes + 1, 0)}), BadTile);
  CHECK_THROWS_CODE(encode_entry_bundle(std::vector<Bytes>(257)), BadTile);
  CHECK(parse_entry_bundle({}, 0).empty());
}
