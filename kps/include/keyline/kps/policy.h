// The KPS access-control policy: the two decisions of the transfer (US 9,124,563; steps E2 and E6 of
// the transfer seed), per key label: AC1, may this target ask this source for this key (when the
// request is made), and AC2, may this source deliver this key to this target (decided before the source
// is shown the target's transport certificate, and again when the sealed key is uploaded).
//
// Policy file, one rule per line, '#' starts a comment (docs/kps.md "Policy"):
//   request SOURCE TARGET LABELGLOB   AC1 only
//   deliver SOURCE TARGET LABELGLOB   AC2 only
//   allow   SOURCE TARGET LABELGLOB   both
//   group   NAME CHIP...              devices of one owner
//   allow-group NAME LABELGLOB        any member to any other member, those labels
// SOURCE, TARGET and CHIP are chip IDs (20 hex digits) or "*"; LABELGLOB is a label with * and ?
// (fnmatch). Every rule names its labels: a v1 rule without one is refused, so a target allowed one
// key of a source never gets the source's others. Nothing is allowed unless a rule says so, and a
// device never transfers to itself.
#pragma once

#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace keyline::kps {

class Policy {
 public:
  // Throws core::FormatError(BadPolicy) naming the line.
  static Policy parse(const std::string& text);
  static Policy load(const std::string& path);
  // "SOURCE:TARGET:LABELGLOB", an allow rule.
  void allow(const std::string& rule);

  bool may_request(const std::string& source, const std::string& target, const std::string& label) const;
  bool may_deliver(const std::string& source, const std::string& target, const std::string& label) const;
  std::size_t rules() const { return m_request.size() + m_deliver.size() + m_groups_allowed.size(); }

 private:
  using Rule = std::tuple<std::string, std::string, std::string>;  // source, target, label glob
  static bool match(const std::vector<Rule>& rules, const std::string& s, const std::string& t, const std::string& l);
  bool same_group(const std::string& s, const std::string& t, const std::string& l) const;

  std::vector<Rule> m_request, m_deliver;
  std::map<std::string, std::set<std::string>> m_groups;
  std::vector<std::pair<std::string, std::string>> m_groups_allowed;  // group, label glob
};

}  // namespace keyline::kps
