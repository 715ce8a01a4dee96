// Request-targets of the log routes as any client sends them (backupdb::log_query): a tree size that
// parses is the one canonical decimal of its value (so "01", "+1" and "1 " are refused), and a found
// parameter is a piece of the query that holds no '&'.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "log_query.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::backupdb;
  const std::string target(reinterpret_cast<const char*>(data), size);
  for (const char* name : {"tree_size", "from", "to"}) {
    const auto value = log_query::param(target, name);
    if (!value) continue;
    if (value->find('&') != std::string::npos || target.find('?') == std::string::npos) std::abort();
    if (const auto n = log_query::tree_size(*value); n && std::to_string(*n) != *value) std::abort();
  }
  if (const auto n = log_query::tree_size(target); n && std::to_string(*n) != target) std::abort();
  return 0;
}
