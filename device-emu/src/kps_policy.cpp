// The source device's own access control (docs/kps.md "Device commands"): D/secure/kps-policy, lines
//   allow TARGETCHIP|* LABELGLOB      # LABELGLOB: * and ? over [A-Za-z0-9._-]
// '#' starts a comment. No file, or no matching line, refuses: a device gives away only what its owner
// listed, whatever the KPS decided. A line that does not parse refuses everything (and says so on
// stderr) rather than being skipped, so a typo never widens the policy.
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>

#include "keyline/device/chip.h"
#include "keyline/device/kps_agent.h"

namespace keyline::device {
namespace {

fs::path policy_path(const fs::path& dir) { return dir / "secure" / "kps-policy"; }

bool valid_glob(const std::string& g) {
  static const std::regex re("^[A-Za-z0-9._*?-]{1,64}$");
  return std::regex_match(g, re);
}

// * matches any run, ? one character (iterative, no backtracking blow-up).
bool glob_match(const std::string& glob, const std::string& text) {
  std::size_t g = 0, t = 0, star = std::string::npos, mark = 0;
  while (t < text.size()) {
    if (g < glob.size() && (glob[g] == '?' || glob[g] == text[t])) {
      ++g;
      ++t;
    } else if (g < glob.size() && glob[g] == '*') {
      star = g++;
      mark = t;
    } else if (star != std::string::npos) {
      g = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (g < glob.size() && glob[g] == '*') ++g;
  return g == glob.size();
}

struct Rule {
  std::string target;  // chip ID or *
  std::string label_glob;
};

bool parse_rule(const std::string& raw, Rule& out) {
  std::istringstream in(raw.substr(0, raw.find('#')));
  std::string verb, extra;
  if (!(in >> verb)) return true;  // blank or comment: nothing
  if (verb != "allow" || !(in >> out.target >> out.label_glob) || (in >> extra)) return false;
  if (out.target != "*" && !core::ChipId::is_valid(out.target)) return false;
  return valid_glob(out.label_glob);
}

}  // namespace

bool device_policy_allows(const fs::path& dir, const core::ChipId& target, const std::string& label) {
  std::ifstream in(policy_path(dir));
  if (!in) return false;
  std::string line;
  bool allowed = false;
  for (int n = 1; std::getline(in, line); ++n) {
    Rule r;
    if (!parse_rule(line, r)) {
      std::cerr << policy_path(dir).string() << ":" << n << ": not 'allow TARGETCHIP|* LABELGLOB': refusing all"
                << std::endl;
      return false;
    }
    if (!r.target.empty() && (r.target == "*" || r.target == target.str()) && glob_match(r.label_glob, label))
      allowed = true;
  }
  return allowed;
}

void add_device_policy(const fs::path& dir, const std::string& target, const std::string& label_glob) {
  Chip::load(dir);  // a device directory, not any directory
  if (target != "*" && !core::ChipId::is_valid(target))
    throw core::ConfigError(core::ErrorCode::Usage, "--target is a chip ID (20 upper-case hex digits) or *");
  const std::string& t = target;
  if (!valid_glob(label_glob))
    throw core::ConfigError(core::ErrorCode::Usage, "--label is a glob of 1-64 of A-Z a-z 0-9 . _ - * ?");
  const auto path = policy_path(dir);
  fs::create_directories(path.parent_path());
  std::string text;
  if (const auto old = read_bytes(path, 1 << 20)) text.assign(old->begin(), old->end());
  if (!text.empty() && text.back() != '\n') text += '\n';
  text += "allow " + t + " " + label_glob + "\n";
  write_atomic(path, reinterpret_cast<const std::uint8_t*>(text.data()), text.size(), std::nullopt, 0600);
}

int cmd_kps_policy_add(const std::string& dir, const std::string& target, const std::string& label_glob) {
  add_device_policy(dir, target, label_glob);
  std::cout << "policy: allow " << target << " " << label_glob << std::endl;
  return core::exit_code::ok;
}

}  // namespace keyline::device
