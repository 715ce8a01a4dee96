// Station settings: flags override environment (KEYLINE_*), which overrides a TOML (or JSON) config file.
#pragma once

#include <string>

#include "keyline/core/bytes.h"

namespace keyline::station {

struct StationConfig {
  std::string station_id = "station-1";
  std::string db;                 // libpq conninfo of the station database (pool, journal, secret schemas)
  std::string hsm_module;         // PKCS#11 module path (default: Debian's SoftHSM2)
  std::string token_label = "keyline";
  std::string pin_file;           // file holding the token user PIN (else $KEYLINE_HSM_PIN)
  std::string pki_dir = ".keyline/pki";  // certificates written by `keys init`
  std::string backupdb_url;       // https://host:port of keyline-backupdb
  std::string hw_type;            // HardwareModuleName hwType OID (default core::kDefaultHwType)
  // "generate" (in process), "pool" (pre-generated, wrapped) or "device" (made and attested in the chip)
  std::string key_source = "generate";
  // The personalization channel (docs/station.md, "The channel"): "scp11a" (GlobalPlatform SCP11a to a
  // genuine chip) or "plain" (devices without a vendor identity, logged as such for every device).
  std::string channel = "scp11a";
  std::string chip_vendors;       // PEM file of the chip vendor CAs the station trusts (scp11a)
  bool short_apdus = false;       // only short APDUs (readers without extended length support)
  int publish_attempts = 5;       // attempts before a record is left to the outbox
  std::string log_format;         // stderr lines: "text" (when unset) or "json" (core/log_format.h)
};

// Fills unset fields from the environment and then from a config file (when path is not empty): TOML, or
// the JSON the station read before (by extension .toml/.json, else by content: JSON opens with '{'), and
// applies defaults. An unknown key or a value of the wrong type is refused (TOML: with its line). Throws
// ConfigError naming the bad setting.
void complete_config(StationConfig& config, const std::string& config_file);

// Whether a config file or line profile is the JSON form: by extension (.json, .toml), else by content:
// a JSON object opens with '{', which no TOML file does (a TOML line opens with a key, a [table] or '#').
bool is_json_config(const std::string& path, const std::string& text);

// What personalizing needs on top of complete_config: scp11a needs --chip-vendors, --key-source device
// needs scp11a. Throws ConfigError(Usage) saying which (other commands run without them).
void check_personalization_config(const StationConfig& config);

// The token user PIN from pin_file or $KEYLINE_HSM_PIN. Throws ConfigError when neither is set.
core::SecureBytes read_pin(const StationConfig& config);

// Default PKCS#11 module: Debian's SoftHSM2.
std::string default_hsm_module();

}  // namespace keyline::station
