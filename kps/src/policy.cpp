#include "keyline/kps/policy.h"

#include <fstream>
#include <sstream>

#include "keyline/core/cplc.h"
#include "keyline/kps/kps.h"

namespace keyline::kps {

namespace {

core::FormatError bad(std::size_t line, const std::string& what) {
  return core::FormatError(errc::BadPolicy, "policy line " + std::to_string(line) + ": " + what);
}

// Chip IDs are compared in their printed form (upper-case hex), whatever case the file uses.
std::string chip_or_star(const std::string& word, std::size_t line) {
  if (word == "*") return word;
  try {
    return core::ChipId::parse(word).str();
  } catch (const core::Error&) {
    throw bad(line, "'" + word + "' is neither a chip ID (20 hex digits) nor *");
  }
}

}  // namespace

Policy Policy::parse(const std::string& text) {
  Policy p;
  std::istringstream in(text);
  std::string raw;
  std::size_t n = 0;
  while (std::getline(in, raw)) {
    ++n;
    const auto hash = raw.find('#');
    if (hash != std::string::npos) raw.resize(hash);
    std::istringstream words(raw);
    std::vector<std::string> w;
    for (std::string x; words >> x;) w.push_back(x);
    if (w.empty()) continue;
    const std::string& verb = w[0];
    if (verb == "request" || verb == "deliver" || verb == "allow") {
      if (w.size() != 3) throw bad(n, verb + " takes SOURCE TARGET");
      const auto rule = std::make_pair(chip_or_star(w[1], n), chip_or_star(w[2], n));
      if (verb != "deliver") p.m_request.insert(rule);
      if (verb != "request") p.m_deliver.insert(rule);
    } else if (verb == "group") {
      if (w.size() < 3) throw bad(n, "group takes NAME CHIP...");
      auto& members = p.m_groups[w[1]];
      for (std::size_t i = 2; i < w.size(); ++i) {
        const auto c = chip_or_star(w[i], n);
        if (c == "*") throw bad(n, "a group lists chip IDs, not *");
        members.insert(c);
      }
    } else if (verb == "allow-group") {
      if (w.size() != 2) throw bad(n, "allow-group takes NAME");
      p.m_groups_allowed.insert(w[1]);
    } else {
      throw bad(n, "unknown rule '" + verb + "' (request, deliver, allow, group, allow-group)");
    }
  }
  for (const auto& g : p.m_groups_allowed)
    if (!p.m_groups.count(g)) throw core::FormatError(errc::BadPolicy, "policy: allow-group " + g + " names no group");
  return p;
}

Policy Policy::load(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw core::ConfigError(core::ErrorCode::Config, "cannot read policy file " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return parse(ss.str());
}

void Policy::allow(const std::string& pair) {
  const auto colon = pair.find(':');
  if (colon == std::string::npos) throw core::FormatError(errc::BadPolicy, "--allow takes SOURCE:TARGET");
  const auto rule = std::make_pair(chip_or_star(pair.substr(0, colon), 0), chip_or_star(pair.substr(colon + 1), 0));
  m_request.insert(rule);
  m_deliver.insert(rule);
}

bool Policy::match(const std::set<std::pair<std::string, std::string>>& rules, const std::string& s,
                   const std::string& t) {
  return rules.count({s, t}) || rules.count({"*", t}) || rules.count({s, "*"}) || rules.count({"*", "*"});
}

bool Policy::same_group(const std::string& s, const std::string& t) const {
  for (const auto& g : m_groups_allowed) {
    const auto& m = m_groups.at(g);
    if (m.count(s) && m.count(t)) return true;
  }
  return false;
}

bool Policy::may_request(const std::string& source, const std::string& target) const {
  if (source == target) return false;
  return match(m_request, source, target) || same_group(source, target);
}

bool Policy::may_deliver(const std::string& source, const std::string& target) const {
  if (source == target) return false;
  return match(m_deliver, source, target) || same_group(source, target);
}

}  // namespace keyline::kps
