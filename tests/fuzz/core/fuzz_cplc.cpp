// CPLC from GET DATA 9F7F, and chip IDs as text. A CPLC that parses must give a chip ID that
// prints and parses back to itself.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "keyline/core/cplc.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const Cplc c = Cplc::parse(data, size);
    const ChipId id = c.chip_id();
    const std::string s = id.str();
    if (!ChipId::is_valid(s) || ChipId::parse(s) != id) std::abort();
    const Bytes tagged = c.encode_tagged();
    if (Cplc::parse(tagged.data(), tagged.size()).raw != c.raw) std::abort();
    if (Cplc::make(c.ic_fabricator(), c.ic_type(), c.ic_serial(), c.ic_batch()).chip_id() != id) std::abort();
  } catch (const Error&) {
  }
  try {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const ChipId id = ChipId::parse(text);
    if (ChipId::parse(id.str()) != id) std::abort();
  } catch (const Error&) {
  }
  return 0;
}
