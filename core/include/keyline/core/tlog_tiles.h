// C2SP tlog-tiles (c2sp.org/tlog-tiles): the log served as static files. Tile paths, tile and
// entry-bundle contents, building tiles while appending, the tree read back from tiles (a
// merkle::HashSource, so proofs come from tiles) and the monitor's full recomputation.
// docs/transparency.md.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "keyline/core/merkle.h"

namespace keyline::core::tlog {

constexpr unsigned tile_height = 8;       // "Merkle Tree": a tile is a subtree of height 8
constexpr std::uint64_t tile_width = 256;  // full tiles are 256 hashes, 8,192 bytes
constexpr unsigned max_tile_level = 63;
constexpr std::size_t max_entry_bytes = 0xFFFF;  // "Log entries": uint16 length prefixes

struct TileId {
  unsigned level = 0;        // 0..63; unused for entry bundles
  std::uint64_t index = 0;   // N
  unsigned width = 256;      // 1..256; below 256 a partial tile, ".p/<W>"
  bool entries = false;      // an entry bundle, tile/entries/<N>
  bool partial() const { return width < tile_width; }
  bool operator==(const TileId& o) const {
    return level == o.level && index == o.index && width == o.width && entries == o.entries;
  }
  bool operator<(const TileId& o) const {
    return std::tie(entries, level, index, width) < std::tie(o.entries, o.level, o.index, o.width);
  }
};

// "tile/<L>/<N>[.p/<W>]" and "tile/entries/<N>[.p/<W>]", N in 3-digit elements, all but the last
// prefixed with 'x' (1234067 is x001/x234/067).
std::string tile_path(const TileId& id);
// The inverse, strict: only the canonical form of each number (no leading zeroes, no extra
// leading "x000/" element), L <= 63, 1 <= W <= 255. Throws FormatError(BadTile).
TileId parse_tile_path(std::string_view path);

// "Partial Tiles": a tree of `size` has size / 256^(L+1) full tiles at level L and one partial
// tile of width floor(size / 256^L) mod 256 when that is not 0.
std::uint64_t full_tiles(unsigned level, std::uint64_t size);
unsigned partial_width(unsigned level, std::uint64_t size);
// Every hash tile of the tree, level by level (entry bundles are the level-0 list with entries
// set). Throws FormatError(BadTile) past 2^24 tiles (a monitor walks bigger trees level by level).
std::vector<TileId> tiles_for_size(std::uint64_t size);
// The partial tiles of `size` (what changes from one checkpoint to the next, besides new full tiles).
std::vector<TileId> partial_tiles(std::uint64_t size);

// The width hashes of tile `id` (level L: tree level 8L, indices index*256 ...) from a source.
Bytes tile_data(const merkle::HashSource& source, const TileId& id);

// Entry bundles: each entry as a big-endian uint16 length and its bytes. Throws FormatError(BadTile)
// for an entry above 65535 bytes or more than 256 entries.
Bytes encode_entry_bundle(const std::vector<Bytes>& entries);
// Exactly `width` entries and nothing after them. Throws FormatError(BadTile).
std::vector<Bytes> parse_entry_bundle(const Bytes& bundle, unsigned width);

// Reads a tile or bundle from wherever the log keeps or serves them; throws when it has none.
using TileReader = std::function<Bytes(const TileId&)>;

// The tree of `size` leaves as stored in its tiles: a subtree of height 8L + r is the MTH of 2^r
// consecutive hashes of one level-L tile. Each tile is read once, and must be width * 32 bytes.
class TileHashSource : public merkle::HashSource {
 public:
  TileHashSource(TileReader read, std::uint64_t size) : m_read(std::move(read)), m_size(size) {}
  // Throws FormatError(BadTile) for a subtree not complete at this size or a tile of the wrong length.
  merkle::Hash subtree(unsigned level, std::uint64_t index) const override;
  std::size_t tiles_read() const { return m_cache.size(); }

 private:
  const Bytes& tile(unsigned level, std::uint64_t tile_index) const;
  TileReader m_read;
  std::uint64_t m_size;
  mutable std::map<std::pair<unsigned, std::uint64_t>, Bytes> m_cache;
};

// Collects tiles as a log appends: give visitor() to merkle::CompactRange::append. Full tiles are
// handed out once by take_full(); partial() is the right edge at the current size.
class TileBuilder {
 public:
  TileBuilder() = default;
  // Resumes a log of `size` leaves: its partial tiles are read back (FormatError(BadTile) if one
  // has the wrong length).
  TileBuilder(std::uint64_t size, const TileReader& read);
  merkle::NodeVisitor visitor();
  std::vector<std::pair<TileId, Bytes>> take_full();
  std::vector<std::pair<TileId, Bytes>> partial() const;

 private:
  void add(unsigned level, std::uint64_t index, const merkle::Hash& h);
  std::vector<Bytes> m_pending;             // per tile level: the hashes of its rightmost tile so far
  std::vector<std::uint64_t> m_next_index;  // per tile level: the tree-level index expected next
  std::vector<std::pair<TileId, Bytes>> m_full;
};

// What a monitor does with a log it follows: recomputes every tile of the tree of `size` from the
// level-0 tiles (from_entries: from the entry bundles, and then checks level 0 too), compares each
// with what `read` serves, and returns the root. Throws FormatError(BadTile) naming the first tile
// that differs or does not parse.
merkle::Hash verify_tiles(const TileReader& read, std::uint64_t size, bool from_entries);

}  // namespace keyline::core::tlog
