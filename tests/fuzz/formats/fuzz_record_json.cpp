// Record JSON from untrusted text (what the public DB receives on publish and recovery on fetch).
// Whatever parses must survive its own JSON form with the same hash.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "keyline/core/error.h"
#include "keyline/core/record.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const Record r = Record::from_json(std::string(reinterpret_cast<const char*>(data), size));
    if (Record::from_json(r.to_json()).hash() != r.hash()) std::abort();
  } catch (const FormatError&) {
  }
  return 0;
}
