#include "keyline/core/config_file.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <toml++/toml.h>

#include "keyline/core/error.h"

namespace keyline::core::config {

namespace {

[[noreturn]] void refuse(const std::string& source, int line, const std::string& why) {
  throw ConfigError(ErrorCode::Config, source + ":" + std::to_string(line) + ": " + why);
}

int line_of(const toml::node& n) { return static_cast<int>(n.source().begin.line); }

// The kind and text of one scalar; Other for dates and times.
Kind scalar(const toml::node& n, std::string& text) {
  if (auto s = n.as_string()) {
    text = s->get();
    return Kind::String;
  }
  if (auto i = n.as_integer()) {
    text = std::to_string(i->get());
    return Kind::Integer;
  }
  if (auto f = n.as_floating_point()) {
    std::ostringstream os;
    os << f->get();
    text = os.str();
    return Kind::Float;
  }
  if (auto b = n.as_boolean()) {
    text = b->get() ? "true" : "false";
    return Kind::Boolean;
  }
  return Kind::Other;
}

void flatten(const toml::table& table, std::vector<std::string>& section, const std::string& source,
             std::vector<Entry>& out);

void add_value(const std::string& key, const toml::node& node, const std::vector<std::string>& section,
               const std::string& source, std::vector<Entry>& out) {
  Entry e{section, key, {}, Kind::Other, false, line_of(node)};
  if (auto arr = node.as_array()) {
    e.array = true;
    for (const auto& el : *arr) {
      std::string text;
      const Kind k = scalar(el, text);
      if (k == Kind::Other) refuse(source, line_of(el), "\"" + key + "\": an array may hold strings, numbers or booleans only");
      if (!e.values.empty() && k != e.kind) refuse(source, line_of(el), "\"" + key + "\": an array of mixed kinds");
      e.kind = k;
      e.values.push_back(text);
    }
  } else {
    std::string text;
    e.kind = scalar(node, text);
    if (e.kind == Kind::Other) refuse(source, e.line, "\"" + key + "\": dates and times are no setting's value");
    e.values.push_back(text);
  }
  out.push_back(std::move(e));
}

void flatten(const toml::table& table, std::vector<std::string>& section, const std::string& source,
             std::vector<Entry>& out) {
  for (const auto& [k, node] : table) {
    const std::string key(k.str());
    if (auto sub = node.as_table()) {
      // An inline table ({a = 1}) would name a section on the line of a key: refused, so a section is
      // always a [header] a reader can find.
      if (sub->is_inline()) refuse(source, line_of(node), "\"" + key + "\": inline tables are not read; use a [section]");
      section.push_back(key);
      flatten(*sub, section, source, out);
      section.pop_back();
    } else if (node.is_array_of_tables()) {
      refuse(source, line_of(node), "\"" + key + "\": arrays of tables are not read");
    } else {
      add_value(key, node, section, source, out);
    }
  }
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(ErrorCode::Config, "cannot read config file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::String: return "a string";
    case Kind::Integer: return "an integer";
    case Kind::Float: return "a number";
    case Kind::Boolean: return "a boolean";
    case Kind::Other: break;
  }
  return "a date";
}

std::vector<Entry> parse_toml(const std::string& text, const std::string& source) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    refuse(source, static_cast<int>(e.source().begin.line), std::string(e.description()));
  }
  std::vector<Entry> out;
  std::vector<std::string> section;
  flatten(root, section, source, out);
  // toml++ keeps a table's keys in order of name; the file's order reads better in messages and lets
  // a repeated option's values keep their order.
  std::stable_sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.line < b.line; });
  return out;
}

std::vector<Entry> read_toml(const std::string& path) { return parse_toml(read_whole(path), path); }

namespace {

std::string command_name(const CLI::App& app) {
  std::string name = app.get_name();
  for (const CLI::App* p = app.get_parent(); p; p = p->get_parent()) name = p->get_name() + " " + name;
  // The root's name is argv[0] unless the program named itself: its path is no part of the message.
  const auto slash = name.rfind('/', name.find(' '));
  return slash == std::string::npos ? name : name.substr(slash + 1);
}

// The (sub)command an entry's section names, or a refusal naming the section.
const CLI::App& section_app(const CLI::App& root, const Entry& e, const std::string& source) {
  const CLI::App* app = &root;
  for (const auto& name : e.section) {
    try {
      app = app->get_subcommand(name);
    } catch (const CLI::OptionNotFound&) {
      refuse(source, e.line, "unknown section [" + name + "] (no subcommand " + name + " of " + command_name(*app) + ")");
    }
  }
  return *app;
}

// Which kinds a value of this option may be written as.
bool kind_fits(const CLI::Option& op, Kind kind) {
  if (op.get_expected_max() == 0) return kind == Kind::Boolean;  // a flag
  const std::string full = op.get_type_name();
  const std::string type = full.substr(0, full.find(':'));
  if (type == "INT" || type == "UINT") return kind == Kind::Integer;
  if (type == "FLOAT") return kind == Kind::Integer || kind == Kind::Float;
  if (type == "BOOLEAN") return kind == Kind::Boolean;
  if (type == "TEXT") return kind == Kind::String;
  return true;  // a type of its own: its conversion checks the text
}

const char* wanted(const CLI::Option& op) {
  if (op.get_expected_max() == 0) return "a boolean (it is a flag)";
  const std::string full = op.get_type_name();
  const std::string type = full.substr(0, full.find(':'));
  if (type == "INT" || type == "UINT") return "an integer";
  if (type == "FLOAT") return "a number";
  if (type == "BOOLEAN") return "a boolean";
  return "a string";
}

void check_entry(const CLI::App& app, const CLI::Option* op, const Entry& e, const std::string& source) {
  const std::string where = e.section.empty() ? "" : " in [" + CLI::detail::join(e.section, ".") + "]";
  if (!op)
    refuse(source, e.line, "unknown key \"" + e.key + "\"" + where + " (no option --" + e.key + " of " +
                               command_name(app) + ")");
  if (!op->get_configurable()) refuse(source, e.line, "\"" + e.key + "\" cannot be set in a config file");
  if (!kind_fits(*op, e.kind))
    refuse(source, e.line, "\"" + e.key + "\"" + where + " must be " + wanted(*op) + ", not " + kind_name(e.kind));
  if (e.array && op->get_items_expected_max() <= 1)
    refuse(source, e.line, "\"" + e.key + "\"" + where + " takes one value, not an array");
}

}  // namespace

std::vector<CLI::ConfigItem> StrictToml::from_config(std::istream& in) const {
  std::string source = "config file";
  if (const CLI::Option* c = m_app.get_config_ptr(); c && c->count() > 0) source = c->as<std::vector<std::string>>().front();
  std::stringstream ss;
  ss << in.rdbuf();
  std::vector<CLI::ConfigItem> items;
  try {
    for (const Entry& e : parse_toml(ss.str(), source)) {
      const CLI::App& app = section_app(m_app, e, source);
      const CLI::Option* op = app.get_option_no_throw("--" + e.key);
      check_entry(app, op, e, source);
      // The environment wins over the file (CLI11 reads the file first and then only fills what is unset).
      if (const std::string env = op->get_envname(); !env.empty())
        if (const char* v = std::getenv(env.c_str()); v && *v) continue;
      CLI::ConfigItem item;
      item.parents = e.section;
      item.name = e.key;
      item.inputs = e.values;
      items.push_back(std::move(item));
    }
  } catch (const ConfigError& err) {
    throw CLI::ConfigError(err.what());
  }
  return items;
}

void set_strict_config(CLI::App& app, const std::string& help) {
  app.set_config("--config", "", help);
  app.config_formatter(std::make_shared<StrictToml>(app));
  app.allow_config_extras(CLI::config_extras_mode::error);
}

namespace {

bool is_secret_name(const std::string& name) {
  for (const char* suffix : {"-pin", "-password", "-passphrase", "-secret", "-key-hex"}) {
    const std::string s(suffix);
    if (name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) return true;
  }
  return name == "--pin" || name == "--password";
}

}  // namespace

void refuse_secret_flags(int argc, const char* const* argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") return;
    if (arg.rfind("--", 0) != 0) continue;
    const std::string name = arg.substr(0, arg.find('='));
    if (!is_secret_name(name)) continue;
    throw CLI::ConfigError(name + " takes a password, PIN or key only from a file or the environment, never the " +
                           "command line (readable by every user of the host): give " + name + "-file FILE, its " +
                           "KEYLINE_* environment variable or a LoadCredential= file (docs/operations.md, \"Secrets " +
                           "on the command line\")");
  }
}

}  // namespace keyline::core::config
