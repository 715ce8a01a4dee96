#include "keyline/kps/policy.h"

#include <fnmatch.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "keyline/core/cplc.h"
#include "keyline/kps/kps.h"

namespace keyline::kps {

namespace {

core::FormatError bad(std::size_t line, const std::string& what) {
  const std::string where = line ? "policy line " + std::to_string(line) : "--allow";
  return core::FormatError(errc::BadPolicy, where + ": " + what);
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

std::string label_glob(const std::string& word, std::size_t line) {
  static const std::regex re("^[A-Za-z0-9._*?-]{1,64}$");
  if (!std::regex_match(word, re)) throw bad(line, "'" + word + "' is not a label glob ([A-Za-z0-9._-] with * and ?)");
  return word;
}

// A v1 rule (no label) is refused with the fix spelled out: the v1 meaning, every key of the source,
// is what issue #17's attack used, so it must be written out as '*' if it is really meant.
core::FormatError needs_label(std::size_t line, const std::string& verb) {
  return bad(line, verb + " takes SOURCE TARGET LABELGLOB: name the key label(s) this rule allows, e.g. '" + verb +
                       " SOURCE TARGET user-key' (or '*' for every key of the source)");
}

bool glob_match(const std::string& glob, const std::string& label) {
  return ::fnmatch(glob.c_str(), label.c_str(), 0) == 0;
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
      if (w.size() == 3) throw needs_label(n, verb);
      if (w.size() != 4) throw bad(n, verb + " takes SOURCE TARGET LABELGLOB");
      const Rule rule{chip_or_star(w[1], n), chip_or_star(w[2], n), label_glob(w[3], n)};
      if (verb != "deliver") p.m_request.push_back(rule);
      if (verb != "request") p.m_deliver.push_back(rule);
    } else if (verb == "group") {
      if (w.size() < 3) throw bad(n, "group takes NAME CHIP...");
      auto& members = p.m_groups[w[1]];
      for (std::size_t i = 2; i < w.size(); ++i) {
        const auto c = chip_or_star(w[i], n);
        if (c == "*") throw bad(n, "a group lists chip IDs, not *");
        members.insert(c);
      }
    } else if (verb == "allow-group") {
      if (w.size() == 2) throw bad(n, "allow-group takes NAME LABELGLOB: name the key label(s), e.g. 'allow-group " +
                                          w[1] + " user-key' (or '*')");
      if (w.size() != 3) throw bad(n, "allow-group takes NAME LABELGLOB");
      p.m_groups_allowed.emplace_back(w[1], label_glob(w[2], n));
    } else {
      throw bad(n, "unknown rule '" + verb + "' (request, deliver, allow, group, allow-group)");
    }
  }
  for (const auto& g : p.m_groups_allowed)
    if (!p.m_groups.count(g.first))
      throw core::FormatError(errc::BadPolicy, "policy: allow-group " + g.first + " names no group");
  return p;
}

Policy Policy::load(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw core::ConfigError(core::ErrorCode::Config, "cannot read policy file " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return parse(ss.str());
}

void Policy::allow(const std::string& rule) {
  const auto c1 = rule.find(':');
  const auto c2 = c1 == std::string::npos ? c1 : rule.find(':', c1 + 1);
  if (c1 == std::string::npos) throw bad(0, "--allow takes SOURCE:TARGET:LABELGLOB");
  if (c2 == std::string::npos)
    throw bad(0, "--allow takes SOURCE:TARGET:LABELGLOB: name the key label(s), e.g. --allow " + rule +
                     ":user-key (or :* for every key of the source)");
  const Rule r{chip_or_star(rule.substr(0, c1), 0), chip_or_star(rule.substr(c1 + 1, c2 - c1 - 1), 0),
               label_glob(rule.substr(c2 + 1), 0)};
  m_request.push_back(r);
  m_deliver.push_back(r);
}

bool Policy::match(const std::vector<Rule>& rules, const std::string& s, const std::string& t, const std::string& l) {
  for (const auto& [rs, rt, rl] : rules)
    if ((rs == "*" || rs == s) && (rt == "*" || rt == t) && glob_match(rl, l)) return true;
  return false;
}

bool Policy::same_group(const std::string& s, const std::string& t, const std::string& l) const {
  for (const auto& [g, glob] : m_groups_allowed) {
    const auto& m = m_groups.at(g);
    if (m.count(s) && m.count(t) && glob_match(glob, l)) return true;
  }
  return false;
}

bool Policy::may_request(const std::string& source, const std::string& target, const std::string& label) const {
  if (source == target) return false;
  return match(m_request, source, target, label) || same_group(source, target, label);
}

bool Policy::may_deliver(const std::string& source, const std::string& target, const std::string& label) const {
  if (source == target) return false;
  return match(m_deliver, source, target, label) || same_group(source, target, label);
}

}  // namespace keyline::kps
