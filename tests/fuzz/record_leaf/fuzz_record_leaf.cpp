// Log entries as a hostile log or mirror serves them in entry bundles (core::parse_record_leaf):
// whatever parses must encode back to the same 62 bytes (one encoding per entry), and anything
// else must be refused with BadRecord only.
#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "keyline/core/error.h"
#include "keyline/core/record_leaf.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  RecordLeaf leaf;
  try {
    leaf = parse_record_leaf(data, size);
  } catch (const FormatError& e) {
    if (e.code() != ErrorCode::BadRecord) std::abort();
    return 0;
  }
  const Bytes again = encode_record_leaf(leaf);
  if (again.size() != size || !std::equal(again.begin(), again.end(), data)) std::abort();
  return 0;
}
