#include "keyline/station/config.h"

#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/config_file.h"
#include "keyline/core/error.h"

namespace keyline::station {

namespace {

void from_env(std::string& field, const char* name) {
  if (!field.empty()) return;
  if (const char* v = std::getenv(name); v && *v) field = v;
}

// What a station config file sets: the text settings by key, and short_apdus.
struct FileSettings {
  std::map<std::string, std::string> text;
  std::optional<bool> short_apdus;
};

const std::set<std::string>& text_keys() {
  static const std::set<std::string> keys{"station_id", "db",       "hsm_module", "token_label",
                                          "pin_file",   "pki_dir",  "backupdb_url", "hw_type",
                                          "key_source", "channel",  "chip_vendors", "log_format"};
  return keys;
}

const char* kKnownKeys = "station_id, db, hsm_module, token_label, pin_file, pki_dir, backupdb_url, hw_type, "
                         "key_source, channel, chip_vendors, short_apdus, log_format";

[[noreturn]] void refuse(const std::string& where, const std::string& why) {
  throw core::ConfigError(core::ErrorCode::Config, where + ": " + why);
}

// TOML (docs/operations.md, "Configuration"): top-level keys only, each refusal naming its line.
FileSettings read_toml_settings(const std::string& path, const std::string& text) {
  FileSettings out;
  for (const auto& e : core::config::parse_toml(text, path)) {
    const std::string at = path + ":" + std::to_string(e.line);
    if (!e.section.empty()) refuse(at, "unknown section [" + e.section.front() + "] (the station's settings have none)");
    if (e.key == "short_apdus") {
      if (e.kind != core::config::Kind::Boolean || e.array) refuse(at, "\"short_apdus\" must be a boolean");
      out.short_apdus = e.values.front() == "true";
    } else if (text_keys().count(e.key)) {
      if (e.kind != core::config::Kind::String || e.array)
        refuse(at, "\"" + e.key + "\" must be a string, not " + (e.array ? "an array" : core::config::kind_name(e.kind)));
      out.text[e.key] = e.values.front();
    } else {
      refuse(at, "unknown key \"" + e.key + "\" (keys: " + kKnownKeys + ")");
    }
  }
  return out;
}

// The JSON form the station read before TOML, still read; Poco names no line, so the key is named.
FileSettings read_json_settings(const std::string& path, const std::string& text) {
  Poco::JSON::Object::Ptr obj;
  try {
    obj = Poco::JSON::Parser().parse(text).extract<Poco::JSON::Object::Ptr>();
  } catch (const Poco::Exception& e) {
    refuse(path, "not JSON: " + e.displayText());
  }
  FileSettings out;
  for (const auto& [key, v] : *obj) {
    if (key == "short_apdus") {
      if (!v.isBoolean()) refuse(path, "\"short_apdus\" must be a boolean");
      out.short_apdus = v.extract<bool>();
    } else if (text_keys().count(key)) {
      // Poco converts numbers and booleans to text on request: {"db": 5} would quietly become "5".
      if (!v.isString()) refuse(path, "\"" + key + "\" must be a string");
      out.text[key] = v.extract<std::string>();
    } else {
      refuse(path, "unknown key \"" + key + "\" (keys: " + kKnownKeys + ")");
    }
  }
  return out;
}

FileSettings read_config_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw core::ConfigError(core::ErrorCode::Config, "cannot read config file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  return is_json_config(path, text) ? read_json_settings(path, text) : read_toml_settings(path, text);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool is_json_config(const std::string& path, const std::string& text) {
  if (ends_with(path, ".json")) return true;
  if (ends_with(path, ".toml")) return false;
  const auto first = text.find_first_not_of(" \t\r\n");
  return first != std::string::npos && text[first] == '{';
}

std::string default_hsm_module() {
  for (const char* p : {"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"}) {
    std::ifstream f(p);
    if (f) return p;
  }
  return "/usr/lib/softhsm/libsofthsm2.so";
}

void complete_config(StationConfig& c, const std::string& config_file) {
  const StationConfig defaults;
  // Fields equal to their default count as unset, so the environment and the file may fill them.
  auto unset_if_default = [](std::string& field, const std::string& def) {
    if (field == def) field.clear();
  };
  unset_if_default(c.station_id, defaults.station_id);
  unset_if_default(c.token_label, defaults.token_label);
  unset_if_default(c.pki_dir, defaults.pki_dir);
  unset_if_default(c.key_source, defaults.key_source);
  unset_if_default(c.channel, defaults.channel);

  from_env(c.station_id, "KEYLINE_STATION_ID");
  from_env(c.db, "KEYLINE_STATION_DB");
  from_env(c.hsm_module, "KEYLINE_HSM_MODULE");
  from_env(c.token_label, "KEYLINE_HSM_TOKEN");
  from_env(c.pin_file, "KEYLINE_HSM_PIN_FILE");
  from_env(c.pki_dir, "KEYLINE_PKI_DIR");
  from_env(c.backupdb_url, "KEYLINE_BACKUPDB_URL");
  from_env(c.hw_type, "KEYLINE_HW_TYPE");
  from_env(c.key_source, "KEYLINE_KEY_SOURCE");
  from_env(c.channel, "KEYLINE_CHANNEL");
  from_env(c.chip_vendors, "KEYLINE_CHIP_VENDORS");
  from_env(c.log_format, "KEYLINE_LOG_FORMAT");
  const char* short_apdus_env = std::getenv("KEYLINE_SHORT_APDUS");
  if (short_apdus_env && std::string(short_apdus_env) == "1") c.short_apdus = true;

  if (!config_file.empty()) {
    const FileSettings file = read_config_file(config_file);
    auto from_file = [&](std::string& field, const char* key) {
      if (!field.empty()) return;
      if (auto it = file.text.find(key); it != file.text.end()) field = it->second;
    };
    from_file(c.station_id, "station_id");
    from_file(c.db, "db");
    from_file(c.hsm_module, "hsm_module");
    from_file(c.token_label, "token_label");
    from_file(c.pin_file, "pin_file");
    from_file(c.pki_dir, "pki_dir");
    from_file(c.backupdb_url, "backupdb_url");
    from_file(c.hw_type, "hw_type");
    from_file(c.key_source, "key_source");
    from_file(c.channel, "channel");
    from_file(c.chip_vendors, "chip_vendors");
    from_file(c.log_format, "log_format");
    if (file.short_apdus && !short_apdus_env) c.short_apdus = c.short_apdus || *file.short_apdus;
  }

  if (c.station_id.empty()) c.station_id = defaults.station_id;
  if (c.token_label.empty()) c.token_label = defaults.token_label;
  if (c.pki_dir.empty()) c.pki_dir = defaults.pki_dir;
  if (c.key_source.empty()) c.key_source = defaults.key_source;
  if (c.channel.empty()) c.channel = defaults.channel;
  if (!c.log_format.empty() && c.log_format != "text" && c.log_format != "json")
    throw core::ConfigError(core::ErrorCode::Config, "log_format must be \"text\" or \"json\", not \"" + c.log_format + "\"");
  if (c.hsm_module.empty()) c.hsm_module = default_hsm_module();
  if (c.hw_type.empty()) c.hw_type = core::kDefaultHwType;
  if (c.key_source != "generate" && c.key_source != "pool" && c.key_source != "device")
    throw core::ConfigError(core::ErrorCode::Config,
                            "key source must be \"generate\", \"pool\" or \"device\", not \"" + c.key_source + "\"");
  if (c.channel != "scp11a" && c.channel != "plain")
    throw core::ConfigError(core::ErrorCode::Config, "channel must be \"scp11a\" or \"plain\", not \"" + c.channel + "\"");
  // The hwType goes into every certificate (RFC 4108 HardwareModuleName): a bad one must stop the station
  // here, not void an IMEI at the first lint. X.690 8.19: at least two arcs, the first 0-2.
  {
    bool ok = !c.hw_type.empty() && c.hw_type.front() >= '0' && c.hw_type.front() <= '2' &&
              c.hw_type.find('.') != std::string::npos && c.hw_type.back() != '.' &&
              c.hw_type.find("..") == std::string::npos;
    for (char ch : c.hw_type) ok = ok && (std::isdigit(static_cast<unsigned char>(ch)) || ch == '.');
    if (!ok) throw core::ConfigError(core::ErrorCode::Config, "hw type must be a dotted OID such as 1.3.6.1.4.1.59999.1.1");
  }
  for (char ch : c.station_id)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.'))
      throw core::ConfigError(core::ErrorCode::Config, "station id may hold letters, digits, '-', '_' and '.' only");
  if (c.station_id.size() > 64) throw core::ConfigError(core::ErrorCode::Config, "station id longer than 64 characters");
}

void check_personalization_config(const StationConfig& c) {
  if (c.channel == "scp11a" && c.chip_vendors.empty())
    throw core::ConfigError(core::ErrorCode::Usage,
                            "channel scp11a checks every chip against its vendor: give --chip-vendors FILE (the chip "
                            "vendor CA certificates), or --channel plain for devices without a vendor identity");
  if (c.key_source == "device" && c.channel != "scp11a")
    throw core::ConfigError(core::ErrorCode::Usage,
                            "--key-source device needs --channel scp11a: only a genuine chip's attestation is "
                            "worth certifying, and its keys never cross a plain link");
}

core::SecureBytes read_pin(const StationConfig& c) {
  core::SecureBytes pin;
  if (!c.pin_file.empty()) {
    std::ifstream in(c.pin_file, std::ios::binary);
    if (!in) throw core::ConfigError(core::ErrorCode::Config, "cannot read PIN file " + c.pin_file);
    char ch;
    while (in.get(ch) && ch != '\n' && ch != '\r') pin.push_back(static_cast<std::uint8_t>(ch));
  } else if (const char* v = std::getenv("KEYLINE_HSM_PIN"); v && *v) {
    for (const char* p = v; *p; ++p) pin.push_back(static_cast<std::uint8_t>(*p));
  } else {
    throw core::ConfigError(core::ErrorCode::Config,
                            "no token PIN: set --pin-file, KEYLINE_HSM_PIN_FILE or KEYLINE_HSM_PIN (never a flag)");
  }
  if (pin.empty()) throw core::ConfigError(core::ErrorCode::Config, "the token PIN is empty");
  return pin;
}

}  // namespace keyline::station
