// One configuration format for every program: TOML (https://toml.io/en/v1.0.0), read by toml++.
// The programs' CLI11 options read it through StrictToml, so every program has the same rules
// (docs/operations.md, "Configuration"): a key no option of its section knows is refused with the file and
// line named, a value of the wrong type with its key and line; a flag wins over the environment
// (KEYLINE_<PROGRAM>_*), which wins over the file; a secret is never a flag.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace keyline::core::config {

enum class Kind { String, Integer, Float, Boolean, Other };

// One key = value of a TOML file, tables flattened: [serve] threads = 8 is {{"serve"}, "threads"}.
// An array gives one value per element (all of one kind, else the key is refused).
struct Entry {
  std::vector<std::string> section;
  std::string key;
  std::vector<std::string> values;  // strings unquoted, booleans "true"/"false", numbers as written
  Kind kind = Kind::Other;
  bool array = false;
  int line = 0;
};

// Parses TOML text; `source` names it in messages. Throws ConfigError(Config) "source:line: reason" on a
// syntax error, an inline table, an array of tables or a date (no setting takes one).
std::vector<Entry> parse_toml(const std::string& text, const std::string& source);
std::vector<Entry> read_toml(const std::string& path);

// "a string", "an integer", ...
const char* kind_name(Kind kind);

// A CLI11 config reader that parses with parse_toml and checks each entry against the app's options before
// CLI11 sees it: its section must be a subcommand, its key a long option name of that (sub)command, its kind
// the option's type; an entry whose option's environment variable is set is dropped (the environment wins
// over the file). Refusals are CLI::ConfigError (exit 2) with file and line.
class StrictToml : public CLI::Config {
 public:
  explicit StrictToml(const CLI::App& app) : m_app(app) {}
  std::string to_config(const CLI::App*, bool, bool, std::string) const override { return {}; }
  std::vector<CLI::ConfigItem> from_config(std::istream& in) const override;

 private:
  const CLI::App& m_app;
};

// app.set_config("--config", ...) with StrictToml as its reader and extras refused.
void set_strict_config(CLI::App& app, const std::string& help = "config file (TOML; keys = long option names, "
                                                                 "[subcommand] sections)");

// Throws CLI::ConfigError (exit 2, before the parse names it an unknown option) when argv gives a secret's
// value directly: any option whose name ends in -pin, -password, -passphrase, -secret or -key-hex, as
// "--x V" or "--x=V". argv is readable by every user of the host; the message names the --x-file form, the
// environment and LoadCredential= instead.
void refuse_secret_flags(int argc, const char* const* argv);

}  // namespace keyline::core::config
