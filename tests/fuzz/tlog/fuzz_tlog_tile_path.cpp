// Tile paths as a client asks for them (core::tlog::parse_tile_path, C2SP tlog-tiles): only the
// canonical form parses, so printing the parsed tile gives the same path.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "keyline/core/error.h"
#include "keyline/core/tlog_tiles.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  const std::string path(reinterpret_cast<const char*>(data), size);
  tlog::TileId id;
  try {
    id = tlog::parse_tile_path(path);
  } catch (const FormatError&) {
    return 0;
  }
  if (tlog::tile_path(id) != path || id.width == 0 || id.width > 256 || id.level > 63) std::abort();
  return 0;
}
