#include "keyline/core/secret_input.h"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "keyline/core/error.h"

namespace keyline::core {
namespace {

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

// One key=value connection string: keywords in order, values skipped. False when it does not parse.
bool keywords_of(std::string_view s, std::vector<std::string>& out) {
  std::size_t i = 0;
  while (true) {
    while (i < s.size() && is_space(s[i])) ++i;
    if (i == s.size()) return true;
    std::string key;
    while (i < s.size() && s[i] != '=' && !is_space(s[i])) key += s[i++];
    while (i < s.size() && is_space(s[i])) ++i;
    if (i == s.size() || s[i] != '=' || key.empty()) return false;
    ++i;
    while (i < s.size() && is_space(s[i])) ++i;
    const bool quoted = i < s.size() && s[i] == '\'';
    if (quoted) ++i;
    while (i < s.size()) {
      if (s[i] == '\\' && i + 1 < s.size()) {
        i += 2;
        continue;
      }
      if (quoted ? s[i] == '\'' : is_space(s[i])) break;
      ++i;
    }
    if (quoted) {
      if (i == s.size()) return false;
      ++i;
    }
    out.push_back(std::move(key));
  }
}

std::string percent_decoded(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

bool uri_has_password(std::string_view uri) {
  const auto scheme_end = uri.find("://");
  const std::string_view rest = uri.substr(scheme_end + 3);
  const auto authority_end = rest.find_first_of("/?");
  const std::string_view authority = rest.substr(0, authority_end);
  const auto at = authority.rfind('@');
  if (at != std::string_view::npos && authority.substr(0, at).find(':') != std::string_view::npos) return true;
  const auto q = uri.find('?');
  if (q == std::string_view::npos) return false;
  std::string_view query = uri.substr(q + 1);
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view item = query.substr(0, amp);
    if (percent_decoded(item.substr(0, item.find('='))) == "password") return true;
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

}  // namespace

Secret read_secret_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ConfigError(ErrorCode::Config, "cannot read the secret file " + path);
  Secret s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (!s.empty() && s.back() == '\n') s.pop_back();
  if (!s.empty() && s.back() == '\r') s.pop_back();
  if (s.empty()) throw ConfigError(ErrorCode::Config, "the secret file " + path + " is empty");
  return s;
}

Secret secret_from_env(const char* name) {
  const char* v = std::getenv(name);
  if (!v) return {};
  return Secret(v, v + std::char_traits<char>::length(v));
}

Secret read_secret(const std::string& file, const char* env_name) {
  return file.empty() ? secret_from_env(env_name) : read_secret_file(file);
}

bool conninfo_has_password(std::string_view conninfo) {
  if (conninfo.rfind("postgresql://", 0) == 0 || conninfo.rfind("postgres://", 0) == 0)
    return uri_has_password(conninfo);
  std::vector<std::string> keys;
  if (!keywords_of(conninfo, keys)) return false;
  for (const auto& k : keys)
    if (k == "password") return true;
  return false;
}

std::vector<std::string> command_line_values(int argc, const char* const* argv, std::string_view option) {
  std::vector<std::string> out;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--") break;  // what follows is not an option
    if (a == option) {
      if (i + 1 < argc) out.emplace_back(argv[++i]);
    } else if (a.size() > option.size() && a.substr(0, option.size()) == option && a[option.size()] == '=') {
      out.emplace_back(a.substr(option.size() + 1));
    }
  }
  return out;
}

void refuse_password_on_command_line(int argc, const char* const* argv, std::string_view option, bool conninfo,
                                     const std::string& instead) {
  const auto values = command_line_values(argc, argv, option);
  for (const auto& v : values) {
    if (!conninfo || conninfo_has_password(v))
      throw ConfigError(ErrorCode::Usage, std::string(option) +
                                              (conninfo ? " holds a password" : " takes a password") +
                                              ": the command line is readable by every user of the host; use " +
                                              instead);
  }
}

void export_pgpassword(const Secret& password) {
  if (password.empty()) return;
  Botan::secure_vector<char> z(password.begin(), password.end());
  z.push_back('\0');
  ::setenv("PGPASSWORD", z.data(), 1);
}

}  // namespace keyline::core
