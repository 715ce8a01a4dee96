// The KPS access-control policy: the two decisions of the transfer (US 9,124,563; steps E2 and E6 of
// the transfer seed): AC1, may this target ask this source for a key (when the request is made), and
// AC2, may this source deliver to this target (when the sealed key is uploaded).
//
// Policy file, one rule per line, '#' starts a comment:
//   request SOURCE TARGET    AC1 only
//   deliver SOURCE TARGET    AC2 only
//   allow   SOURCE TARGET    both
//   group   NAME CHIP...     devices of one owner; "allow-group NAME" lets any member transfer to any other
//   allow-group NAME
// SOURCE, TARGET and CHIP are chip IDs (20 hex digits) or "*". Nothing is allowed unless a rule says so,
// and a device never transfers to itself.
#pragma once

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace keyline::kps {

class Policy {
 public:
  // Throws core::FormatError(BadPolicy) naming the line.
  static Policy parse(const std::string& text);
  static Policy load(const std::string& path);
  // "SOURCE:TARGET", allowed both ways of the check.
  void allow(const std::string& pair);

  bool may_request(const std::string& source, const std::string& target) const;
  bool may_deliver(const std::string& source, const std::string& target) const;
  std::size_t rules() const { return m_request.size() + m_deliver.size() + m_groups_allowed.size(); }

 private:
  static bool match(const std::set<std::pair<std::string, std::string>>& rules, const std::string& s,
                    const std::string& t);
  bool same_group(const std::string& s, const std::string& t) const;

  std::set<std::pair<std::string, std::string>> m_request, m_deliver;
  std::map<std::string, std::set<std::string>> m_groups;
  std::set<std::string> m_groups_allowed;
};

}  // namespace keyline::kps
