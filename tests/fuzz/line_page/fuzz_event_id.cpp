// Last-Event-ID from untrusted bytes (keyline::station::line_detail::parse_event_id): never throws;
// whatever it takes is digits, a dot, digits, and prints back as the same text.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "status_server.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string id(reinterpret_cast<const char*>(data), size);
  std::uint64_t seq = 0;
  std::int64_t ended = 0;
  if (!keyline::station::line_detail::parse_event_id(id, seq, ended)) return 0;
  if (ended < 0) std::abort();
  // Leading zeros are the one spelling that does not come back the same.
  const std::string back = std::to_string(seq) + "." + std::to_string(ended);
  const auto dot = id.find('.');
  if (std::stoull(id.substr(0, dot)) != seq || id.substr(0, dot).size() > 18) std::abort();
  if (back.size() > id.size()) std::abort();
  return 0;
}
