#include "keyline/core/tlog_tiles.h"

#include <algorithm>

#include "keyline/core/error.h"

namespace keyline::core::tlog {

namespace {

[[noreturn]] void bad_tile(const std::string& why) { throw FormatError(ErrorCode::BadTile, why); }

// size >> bits without the undefined shift by 64 or more.
std::uint64_t shr(std::uint64_t v, unsigned bits) { return bits >= 64 ? 0 : v >> bits; }

std::string three_digits(std::uint64_t v) {
  std::string s = std::to_string(v);
  return std::string(3 - s.size(), '0') + s;
}

std::string encode_index(std::uint64_t n) {
  std::vector<std::uint64_t> groups;
  do {
    groups.push_back(n % 1000);
    n /= 1000;
  } while (n != 0);
  std::string out;
  for (std::size_t i = groups.size(); i-- > 0;) out += (i > 0 ? "x" : "") + three_digits(groups[i]) + (i > 0 ? "/" : "");
  return out;
}

// A decimal without leading zeroes, at most `max`.
std::uint64_t parse_small(std::string_view s, std::uint64_t max, const char* what) {
  if (s.empty() || s.size() > 3 || (s.size() > 1 && s[0] == '0')) bad_tile(std::string(what) + " is not canonical decimal");
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') bad_tile(std::string(what) + " is not decimal");
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  if (v > max) bad_tile(std::string(what) + " out of range");
  return v;
}

std::uint64_t parse_group(std::string_view s) {
  if (s.size() != 3 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
    bad_tile("tile index element is not 3 digits");
  return static_cast<std::uint64_t>((s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0'));
}

// "x001/x234/067" and what follows it (".p/<W>" or nothing).
std::uint64_t parse_index(std::string_view& rest) {
  std::uint64_t n = 0;
  bool first = true;
  while (!rest.empty() && rest[0] == 'x') {
    const auto slash = rest.find('/');
    if (slash != 4) bad_tile("tile index element is not x and 3 digits");
    const std::uint64_t g = parse_group(rest.substr(1, 3));
    if (first && g == 0) bad_tile("tile index has a leading zero element");
    if (n > (UINT64_MAX - g) / 1000) bad_tile("tile index above 2^64 - 1");
    n = n * 1000 + g;
    first = false;
    rest.remove_prefix(5);
  }
  const std::uint64_t g = parse_group(rest.substr(0, 3));
  if (n > (UINT64_MAX - g) / 1000) bad_tile("tile index above 2^64 - 1");
  rest.remove_prefix(std::min<std::size_t>(3, rest.size()));
  return n * 1000 + g;
}

Bytes read_checked(const TileReader& read, const TileId& id) {
  Bytes b = read(id);
  if (!id.entries && b.size() != std::size_t{id.width} * merkle::hash_size)
    bad_tile(tile_path(id) + " is " + std::to_string(b.size()) + " bytes, not " + std::to_string(id.width * 32));
  return b;
}

merkle::Hash hash_at(const Bytes& tile, std::size_t i) {
  merkle::Hash h;
  std::copy(tile.begin() + static_cast<std::ptrdiff_t>(i * 32), tile.begin() + static_cast<std::ptrdiff_t>(i * 32 + 32), h.begin());
  return h;
}

}  // namespace

std::string tile_path(const TileId& id) {
  std::string out = "tile/" + (id.entries ? std::string("entries") : std::to_string(id.level)) + "/" + encode_index(id.index);
  if (id.partial()) out += ".p/" + std::to_string(id.width);
  return out;
}

TileId parse_tile_path(std::string_view path) {
  if (path.size() > 128 || path.substr(0, 5) != "tile/") bad_tile("not a tile path");
  path.remove_prefix(5);
  TileId id;
  const auto slash = path.find('/');
  if (slash == std::string_view::npos) bad_tile("tile path without an index");
  if (path.substr(0, slash) == "entries") {
    id.entries = true;
  } else {
    id.level = static_cast<unsigned>(parse_small(path.substr(0, slash), max_tile_level, "tile level"));
  }
  path.remove_prefix(slash + 1);
  id.index = parse_index(path);
  if (!path.empty()) {
    if (path.substr(0, 3) != ".p/") bad_tile("unexpected text after the tile index");
    id.width = static_cast<unsigned>(parse_small(path.substr(3), tile_width - 1, "partial tile width"));
    if (id.width == 0) bad_tile("partial tile of width 0");
  }
  return id;
}

std::uint64_t full_tiles(unsigned level, std::uint64_t size) { return shr(size, tile_height * (level + 1)); }

unsigned partial_width(unsigned level, std::uint64_t size) {
  return static_cast<unsigned>(shr(size, tile_height * level) % tile_width);
}

std::vector<TileId> tiles_for_size(std::uint64_t size) {
  std::vector<TileId> out;
  for (unsigned level = 0; shr(size, tile_height * level) != 0; ++level) {
    const std::uint64_t full = full_tiles(level, size);
    if (full > (std::uint64_t{1} << 24) - out.size()) bad_tile("more than 2^24 tiles");
    for (std::uint64_t n = 0; n < full; ++n) out.push_back({level, n, 256, false});
    if (const unsigned w = partial_width(level, size)) out.push_back({level, full, w, false});
  }
  return out;
}

std::vector<TileId> partial_tiles(std::uint64_t size) {
  std::vector<TileId> out;
  for (unsigned level = 0; shr(size, tile_height * level) != 0; ++level)
    if (const unsigned w = partial_width(level, size)) out.push_back({level, full_tiles(level, size), w, false});
  return out;
}

Bytes tile_data(const merkle::HashSource& source, const TileId& id) {
  if (id.entries || id.width == 0 || id.width > tile_width) bad_tile("not a hash tile");
  Bytes out;
  out.reserve(std::size_t{id.width} * 32);
  for (std::uint64_t i = 0; i < id.width; ++i) {
    const auto h = source.subtree(tile_height * id.level, id.index * tile_width + i);
    out.insert(out.end(), h.begin(), h.end());
  }
  return out;
}

Bytes encode_entry_bundle(const std::vector<Bytes>& entries) {
  if (entries.size() > tile_width) bad_tile("an entry bundle holds at most 256 entries");
  Bytes out;
  for (const auto& e : entries) {
    if (e.size() > max_entry_bytes) bad_tile("an entry is above 65535 bytes");
    put_u16(out, static_cast<std::uint16_t>(e.size()));
    out.insert(out.end(), e.begin(), e.end());
  }
  return out;
}

std::vector<Bytes> parse_entry_bundle(const Bytes& bundle, unsigned width) {
  std::vector<Bytes> out;
  std::size_t at = 0;
  while (out.size() < width) {
    if (bundle.size() - at < 2) bad_tile("entry bundle ends inside a length");
    const std::size_t len = (std::size_t{bundle[at]} << 8) | bundle[at + 1];
    at += 2;
    if (bundle.size() - at < len) bad_tile("entry bundle ends inside an entry");
    out.emplace_back(bundle.begin() + static_cast<std::ptrdiff_t>(at), bundle.begin() + static_cast<std::ptrdiff_t>(at + len));
    at += len;
  }
  if (at != bundle.size()) bad_tile("entry bundle has bytes after its last entry");
  return out;
}

const Bytes& TileHashSource::tile(unsigned level, std::uint64_t tile_index) const {
  const auto key = std::make_pair(level, tile_index);
  if (auto it = m_cache.find(key); it != m_cache.end()) return it->second;
  const unsigned width = tile_index < full_tiles(level, m_size) ? 256 : partial_width(level, m_size);
  return m_cache.emplace(key, read_checked(m_read, TileId{level, tile_index, width, false})).first->second;
}

merkle::Hash TileHashSource::subtree(unsigned level, std::uint64_t index) const {
  const unsigned tl = level / tile_height, r = level % tile_height;
  const std::uint64_t count = std::uint64_t{1} << r;
  if (level > 63 || shr(index, 64 - r) != 0 || (index + 1) > shr(shr(m_size, tile_height * tl), r))
    bad_tile("subtree " + std::to_string(level) + "/" + std::to_string(index) + " is not complete in the tree");
  const std::uint64_t first = index << r;  // at tree level 8 * tl
  const Bytes& t = tile(tl, first / tile_width);
  std::vector<merkle::Hash> row;
  for (std::uint64_t i = 0; i < count; ++i) row.push_back(hash_at(t, (first % tile_width) + i));
  // The levels a tile leaves out ("note that a tile represents the entire subtree of height 8").
  while (row.size() > 1) {
    for (std::size_t i = 0; i < row.size() / 2; ++i) row[i] = merkle::node_hash(row[2 * i], row[2 * i + 1]);
    row.resize(row.size() / 2);
  }
  return row[0];
}

TileBuilder::TileBuilder(std::uint64_t size, const TileReader& read) {
  for (unsigned level = 0; shr(size, tile_height * level) != 0; ++level) {
    m_pending.emplace_back();
    m_next_index.push_back(shr(size, tile_height * level));
    if (const unsigned w = partial_width(level, size))
      m_pending.back() = read_checked(read, TileId{level, full_tiles(level, size), w, false});
  }
}

merkle::NodeVisitor TileBuilder::visitor() {
  return [this](unsigned level, std::uint64_t index, const merkle::Hash& h) { add(level, index, h); };
}

void TileBuilder::add(unsigned level, std::uint64_t index, const merkle::Hash& h) {
  if (level % tile_height != 0) return;
  const unsigned tl = level / tile_height;
  if (m_pending.size() <= tl) {
    m_pending.resize(tl + 1);
    m_next_index.resize(tl + 1, 0);
  }
  if (index != m_next_index[tl]) bad_tile("tile hashes out of order (the builder resumed at another size)");
  ++m_next_index[tl];
  m_pending[tl].insert(m_pending[tl].end(), h.begin(), h.end());
  if (m_pending[tl].size() == tile_width * merkle::hash_size) {
    m_full.emplace_back(TileId{tl, index / tile_width, 256, false}, std::move(m_pending[tl]));
    m_pending[tl].clear();
  }
}

std::vector<std::pair<TileId, Bytes>> TileBuilder::take_full() { return std::exchange(m_full, {}); }

std::vector<std::pair<TileId, Bytes>> TileBuilder::partial() const {
  std::vector<std::pair<TileId, Bytes>> out;
  for (unsigned tl = 0; tl < m_pending.size(); ++tl) {
    if (m_pending[tl].empty()) continue;
    const auto w = static_cast<unsigned>(m_pending[tl].size() / merkle::hash_size);
    out.emplace_back(TileId{tl, m_next_index[tl] / tile_width, w, false}, m_pending[tl]);
  }
  return out;
}

merkle::Hash verify_tiles(const TileReader& read, std::uint64_t size, bool from_entries) {
  merkle::CompactRange range;
  TileBuilder builder;
  const auto visit = builder.visitor();
  auto compare = [&](const std::pair<TileId, Bytes>& built) {
    if (built.first.level == 0 && !from_entries) return;  // level 0 is the input
    if (read_checked(read, built.first) != built.second) bad_tile(tile_path(built.first) + " differs from the tree its level below gives");
  };
  const std::uint64_t bundles = full_tiles(0, size) + (partial_width(0, size) != 0 ? 1 : 0);
  for (std::uint64_t n = 0; n < bundles; ++n) {
    const unsigned w = n < full_tiles(0, size) ? 256 : partial_width(0, size);
    if (from_entries) {
      for (const auto& e : parse_entry_bundle(read(TileId{0, n, w, true}), w)) range.append(merkle::leaf_hash(e), visit);
    } else {
      const Bytes t = read_checked(read, TileId{0, n, w, false});
      for (unsigned i = 0; i < w; ++i) range.append(hash_at(t, i), visit);
    }
    for (const auto& full : builder.take_full()) compare(full);
  }
  for (const auto& part : builder.partial()) compare(part);
  return range.root();
}

}  // namespace keyline::core::tlog
