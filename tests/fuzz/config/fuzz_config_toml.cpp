// Config files as an operator, a package or a careless copy hands them over: parse_toml either refuses
// with a ConfigError that names the source and a line, or gives entries whose lines lie within the text,
// with one value per scalar and one kind per array; and the same text parses the same.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "keyline/core/config_file.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::size_t lines = 1;
  for (char c : text) lines += c == '\n';
  std::vector<config::Entry> entries;
  try {
    entries = config::parse_toml(text, "fuzz.toml");
  } catch (const ConfigError& e) {
    if (std::string(e.what()).rfind("fuzz.toml:", 0) != 0) std::abort();
    return 0;
  }
  for (const auto& e : entries) {
    if (e.line < 1 || static_cast<std::size_t>(e.line) > lines) std::abort();
    if (!e.array && e.values.size() != 1) std::abort();
    if (e.kind == config::Kind::Other && !(e.array && e.values.empty())) std::abort();
  }
  if (config::parse_toml(text, "fuzz.toml").size() != entries.size()) std::abort();
  return 0;
}
