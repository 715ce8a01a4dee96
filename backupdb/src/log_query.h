// The query parameters of the log's read API (docs/api.md, "Transparency log"): what a client puts
// after '?', parsed strictly (fuzz target backupdb_log_query).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace keyline::backupdb::log_query {

// The value of the first `name=` in the query of a request-target, when present ("" for a bare
// name). Only tree sizes are asked for, so nothing needs percent-decoding.
std::optional<std::string> param(std::string_view target, std::string_view name);
// A tree size as a checkpoint writes it (ASCII decimal, no leading zeroes, no sign), below 10^18.
std::optional<std::uint64_t> tree_size(const std::string& s);

}  // namespace keyline::backupdb::log_query
