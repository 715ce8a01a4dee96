#include "log_query.h"

namespace keyline::backupdb::log_query {

std::optional<std::string> param(std::string_view target, std::string_view name) {
  const auto q = target.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const auto item = rest.substr(0, amp);
    const auto eq = item.find('=');
    if (item.substr(0, eq) == name) return std::string(eq == std::string_view::npos ? std::string_view{} : item.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    rest.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::optional<std::uint64_t> tree_size(const std::string& s) {
  // 18 digits stay below 2^63, so the value also fits the database's bigint.
  if (s.empty() || s.size() > 18 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  std::uint64_t v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return v;
}

}  // namespace keyline::backupdb::log_query
