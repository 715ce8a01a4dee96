// Line profiles and fleet address lists (docs/line.md).
#include <cctype>
#include <fstream>
#include <map>
#include <sstream>

#include <Poco/JSON/Parser.h>

#include "keyline/core/config_file.h"
#include "keyline/core/error.h"
#include "keyline/core/data_package.h"
#include "keyline/station/config.h"
#include "keyline/station/line.h"

namespace keyline::station {

namespace {

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw core::ConfigError(core::ErrorCode::Config, "line profile " + path + ": " + what);
}

bool valid_endpoint(const std::string& e) {
  const auto colon = e.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= e.size()) return false;
  for (std::size_t i = colon + 1; i < e.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(e[i]))) return false;
  return std::stol(e.substr(colon + 1)) > 0 && std::stol(e.substr(colon + 1)) < 65536;
}

std::int64_t get_int(const Poco::JSON::Object::Ptr& o, const std::string& key, std::int64_t def,
                     const std::string& path, std::int64_t lo, std::int64_t hi) {
  if (!o->has(key)) return def;
  std::int64_t v = 0;
  try {
    v = o->getValue<std::int64_t>(key);
  } catch (const Poco::Exception&) {
    bad(path, "\"" + key + "\" must be a number");
  }
  if (v < lo || v > hi) bad(path, "\"" + key + "\" must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  return v;
}

using core::config::Kind;

// The kind each top-level key of a TOML profile takes (application_items is a [table] of strings).
Kind profile_kind(const std::string& key, const std::string& at) {
  static const std::map<std::string, Kind> kinds{
      {"devices", Kind::String},        {"fleet_file", Kind::String},  {"fleet_ports", Kind::String},
      {"concurrency", Kind::Integer},   {"key_source", Kind::String},  {"tac", Kind::String},
      {"pool_low_water", Kind::Integer}, {"pool_refill", Kind::Integer}};
  const auto it = kinds.find(key);
  if (it == kinds.end()) bad(at, "unknown field \"" + key + "\"");
  return it->second;
}

Poco::Dynamic::Var toml_value(const core::config::Entry& e) {
  if (e.kind == Kind::Integer) return static_cast<Poco::Int64>(std::stoll(e.values.front()));
  return e.values.front();
}

// A TOML profile as the JSON object the checks below read, every key and kind checked here first so a
// refusal names its line ("line profile P:LINE: ...").
Poco::JSON::Object::Ptr toml_profile(const std::string& path, const std::string& text) {
  Poco::JSON::Object::Ptr o = new Poco::JSON::Object;
  Poco::JSON::Object::Ptr items = new Poco::JSON::Object;
  for (const auto& e : core::config::parse_toml(text, path)) {
    const std::string at = path + ":" + std::to_string(e.line);
    const bool item = e.section == std::vector<std::string>{"application_items"};
    if (!e.section.empty() && !item) bad(at, "unknown table [" + e.section.front() + "]");
    const Kind want = item ? Kind::String : profile_kind(e.key, at);
    if (e.kind != want || e.array != (!item && e.key == "devices"))
      bad(at, "\"" + e.key + "\" must be " + (e.key == "devices" ? "an array of strings" : core::config::kind_name(want)));
    if (item) {
      items->set(e.key, e.values.front());
    } else if (e.array) {
      Poco::JSON::Array::Ptr arr = new Poco::JSON::Array;
      for (const auto& v : e.values) arr->add(v);
      o->set(e.key, arr);
    } else {
      o->set(e.key, toml_value(e));
    }
  }
  if (items->size() > 0) o->set("application_items", items);
  return o;
}

}  // namespace

// TOML (docs/line.md, "Profiles"), or the JSON profiles of before (is_json_config).
LineProfile load_profile(const std::string& path) {
  std::ifstream in(path);
  if (!in) bad(path, "cannot be read");
  std::stringstream ss;
  ss << in.rdbuf();
  Poco::JSON::Object::Ptr o;
  if (!is_json_config(path, ss.str())) {
    o = toml_profile(path, ss.str());
  } else {
    try {
      o = Poco::JSON::Parser().parse(ss.str()).extract<Poco::JSON::Object::Ptr>();
    } catch (const Poco::Exception& e) {
      bad(path, "not a JSON object (" + e.displayText() + ")");
    }
  }
  static const char* known[] = {"devices",   "fleet_file", "fleet_ports",      "concurrency", "key_source",
                                "tac",       "pool_low_water", "pool_refill", "application_items"};
  for (const auto& name : o->getNames()) {
    bool ok = false;
    for (const char* k : known) ok = ok || name == k;
    if (!ok) bad(path, "unknown field \"" + name + "\"");
  }
  LineProfile p;
  p.concurrency = static_cast<int>(get_int(o, "concurrency", p.concurrency, path, 1, 1024));
  p.pool_low_water = get_int(o, "pool_low_water", 0, path, 0, 100000000);
  p.pool_refill = get_int(o, "pool_refill", 0, path, 0, 100000000);
  if (o->has("key_source")) {
    p.key_source = o->getValue<std::string>("key_source");
    if (p.key_source != "generate" && p.key_source != "pool") bad(path, "\"key_source\" is generate or pool");
  }
  if (o->has("tac")) {
    p.tac = o->getValue<std::string>("tac");
    if (p.tac.size() != 8 || p.tac.find_first_not_of("0123456789") != std::string::npos)
      bad(path, "\"tac\" must be 8 digits (3GPP TS 23.003 section 6.2.1)");
  }
  if ((p.pool_low_water > 0) != !p.tac.empty() || (p.pool_low_water > 0) != (p.pool_refill > 0))
    if (p.pool_low_water > 0 || p.pool_refill > 0) bad(path, "pool top-up needs \"tac\", \"pool_low_water\" and \"pool_refill\"");
  if (o->has("devices")) {
    auto arr = o->getArray("devices");
    if (!arr) bad(path, "\"devices\" must be an array of \"HOST:PORT\"");
    for (std::size_t i = 0; i < arr->size(); ++i) {
      const std::string e = arr->getElement<std::string>(static_cast<unsigned>(i));
      if (!valid_endpoint(e)) bad(path, "devices[" + std::to_string(i) + "] is not HOST:PORT: " + e);
      p.devices.push_back({e, ""});
    }
  }
  if (o->has("fleet_file")) {
    auto more = read_fleet_file(o->getValue<std::string>("fleet_file"));
    p.devices.insert(p.devices.end(), more.begin(), more.end());
  }
  if (o->has("fleet_ports")) {
    auto more = fleet_ports(o->getValue<std::string>("fleet_ports"));
    p.devices.insert(p.devices.end(), more.begin(), more.end());
  }
  if (o->has("application_items")) {
    auto items = o->getObject("application_items");
    if (!items) bad(path, "\"application_items\" must be an object {\"0F01\": \"<hex>\", ...}");
    for (const auto& tag : items->getNames()) {
      std::uint16_t t = 0;
      try {
        const auto tb = core::from_hex(tag);
        if (tb.size() != 2) throw core::FormatError(core::ErrorCode::BadHex, "two bytes");
        t = static_cast<std::uint16_t>(tb[0] << 8 | tb[1]);
      } catch (const core::Error&) {
        bad(path, "application item tag " + tag + " is not a 2-byte hex DGI");
      }
      if (t < core::dgi_tag::app_first || t > core::dgi_tag::app_last)
        bad(path, "application item tag " + tag + " is outside 0F01-0FFF");
      try {
        p.app_items.emplace_back(t, core::from_hex(items->getValue<std::string>(tag)));
      } catch (const core::Error&) {
        bad(path, "application item " + tag + " value is not hex");
      }
    }
  }
  return p;
}

std::vector<LineDevice> read_fleet_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw core::ConfigError(core::ErrorCode::Config, "fleet file " + path + " cannot be read");
  std::vector<LineDevice> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string word, addr, chip;
    if (!(ls >> word >> addr) || word != "listening") continue;
    ls >> chip;
    if (!valid_endpoint(addr))
      throw core::ConfigError(core::ErrorCode::Config, "fleet file " + path + ": bad address " + addr);
    out.push_back({addr, chip.size() == 20 ? chip : ""});
  }
  return out;
}

std::vector<LineDevice> fleet_ports(const std::string& spec) {
  const auto err = [&] {
    return core::ConfigError(core::ErrorCode::Usage, "--fleet-ports takes [HOST:]BASE:COUNT, got " + spec);
  };
  std::string host = "127.0.0.1";
  std::string rest = spec;
  const auto last = spec.rfind(':');
  if (last == std::string::npos) throw err();
  const auto first = spec.rfind(':', last - 1);
  if (first != std::string::npos && last > 0) {
    host = spec.substr(0, first);
    rest = spec.substr(first + 1);
  }
  const auto colon = rest.find(':');
  long base = 0, count = 0;
  try {
    std::size_t n1 = 0, n2 = 0;
    base = std::stol(rest.substr(0, colon), &n1);
    count = std::stol(rest.substr(colon + 1), &n2);
    if (n1 != colon || n2 != rest.size() - colon - 1) throw err();
  } catch (const std::logic_error&) {
    throw err();
  }
  if (host.empty() || base <= 0 || count <= 0 || base + count > 65536) throw err();
  std::vector<LineDevice> out;
  for (long i = 0; i < count; ++i) out.push_back({host + ":" + std::to_string(base + i), ""});
  return out;
}

}  // namespace keyline::station
