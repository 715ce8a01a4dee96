// The station's config file and line profile in TOML, the JSON of before still read, refusals with lines.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "keyline/core/error.h"
#include "keyline/station/config.h"
#include "keyline/station/line.h"

namespace fs = std::filesystem;
using namespace keyline;
using namespace keyline::station;

namespace {

const char* const kEnv[] = {"KEYLINE_STATION_ID", "KEYLINE_STATION_DB", "KEYLINE_HSM_MODULE", "KEYLINE_HSM_TOKEN",
                            "KEYLINE_HSM_PIN_FILE", "KEYLINE_PKI_DIR", "KEYLINE_BACKUPDB_URL", "KEYLINE_HW_TYPE",
                            "KEYLINE_KEY_SOURCE", "KEYLINE_CHANNEL", "KEYLINE_CHIP_VENDORS", "KEYLINE_SHORT_APDUS"};

struct CleanEnv {
  CleanEnv() {
    for (const char* n : kEnv) ::unsetenv(n);
  }
  ~CleanEnv() {
    for (const char* n : kEnv) ::unsetenv(n);
  }
};

std::string temp_file(const std::string& name, const std::string& content) {
  const auto p = fs::temp_directory_path() / ("keyline-unit-config-" + std::to_string(::getpid()) + "-" + name);
  std::ofstream(p, std::ios::binary | std::ios::trunc) << content;
  return p.string();
}

std::string config_refusal(const std::string& path) {
  StationConfig c;
  try {
    complete_config(c, path);
  } catch (const core::ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string profile_refusal(const std::string& path) {
  try {
    load_profile(path);
  } catch (const core::ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("station config: TOML sets the settings, the environment and flags win over it") {
  CleanEnv env;
  const auto file = temp_file("st.toml", "# line1\nstation_id = \"line1\"\ndb = \"dbname=s\"\nchannel = \"plain\"\n"
                                         "short_apdus = true\n");
  StationConfig c;
  complete_config(c, file);
  CHECK(c.station_id == "line1");
  CHECK(c.db == "dbname=s");
  CHECK(c.channel == "plain");
  CHECK(c.short_apdus);
  ::setenv("KEYLINE_STATION_DB", "dbname=env", 1);
  StationConfig d;
  d.station_id = "flag";
  complete_config(d, file);
  CHECK(d.db == "dbname=env");
  CHECK(d.station_id == "flag");
}

TEST_CASE("station config: the packaged example is read") {
  CleanEnv env;
  const char* src = std::getenv("KEYLINE_SOURCE_DIR");
  REQUIRE(src);
  StationConfig c;
  complete_config(c, std::string(src) + "/packaging/config/station-line1.toml");
  CHECK(c.station_id == "line1");
  CHECK(c.key_source == "device");
}

TEST_CASE("station config: JSON still read, by extension or content") {
  CleanEnv env;
  StationConfig c;
  complete_config(c, temp_file("st.json", R"({"station_id":"j1","db":"dbname=j"})"));
  CHECK(c.station_id == "j1");
  StationConfig d;
  complete_config(d, temp_file("st-noext", "  \n{\"db\":\"dbname=k\"}"));
  CHECK(d.db == "dbname=k");
  CHECK(is_json_config("x.json", "a = 1"));
  CHECK_FALSE(is_json_config("x.toml", "{"));
  CHECK_FALSE(is_json_config("x", "# {\n"));
}

TEST_CASE("station config: unknown keys, wrong types and sections refused with the line") {
  CleanEnv env;
  const auto unknown = temp_file("u.toml", "db = \"x\"\n\nstation = \"y\"\n");
  CHECK(config_refusal(unknown).find(unknown + ":3: unknown key \"station\"") != std::string::npos);
  const auto type = temp_file("t.toml", "db = 5\n");
  CHECK(config_refusal(type).find(type + ":1: \"db\" must be a string, not an integer") != std::string::npos);
  const auto arr = temp_file("a.toml", "db = [\"x\"]\n");
  CHECK(config_refusal(arr).find("must be a string, not an array") != std::string::npos);
  const auto sec = temp_file("s.toml", "[station]\ndb = \"x\"\n");
  CHECK(config_refusal(sec).find(sec + ":2: unknown section [station]") != std::string::npos);
  const auto flag = temp_file("f.toml", "short_apdus = \"yes\"\n");
  CHECK(config_refusal(flag).find("must be a boolean") != std::string::npos);
  const auto json = temp_file("u.json", R"({"db":"x","stationid":"y"})");
  CHECK(config_refusal(json).find("unknown key \"stationid\"") != std::string::npos);
}

TEST_CASE("line profile: TOML, with application items as a table") {
  const auto file = temp_file("p.toml", "devices = [\"127.0.0.1:9000\", \"127.0.0.1:9001\"]\nconcurrency = 4\n"
                                        "tac = \"35345678\"\npool_low_water = 10\npool_refill = 100\n"
                                        "[application_items]\n0F01 = \"00112233\"\n");
  const auto p = load_profile(file);
  CHECK(p.devices.size() == 2);
  CHECK(p.devices[1].endpoint == "127.0.0.1:9001");
  CHECK(p.concurrency == 4);
  CHECK(p.pool_refill == 100);
  REQUIRE(p.app_items.size() == 1);
  CHECK(p.app_items[0].first == 0x0F01);
  CHECK(p.app_items[0].second.size() == 4);
  const char* src = std::getenv("KEYLINE_SOURCE_DIR");
  REQUIRE(src);
  CHECK(load_profile(std::string(src) + "/packaging/config/line-line1.toml").devices.size() == 2);
}

TEST_CASE("line profile: JSON still read, TOML refusals name the line") {
  CHECK(load_profile(temp_file("p.json", R"({"devices":["h:1"],"concurrency":2})")).concurrency == 2);
  const auto unknown = temp_file("pu.toml", "concurrency = 2\ndevice = [\"h:1\"]\n");
  CHECK(profile_refusal(unknown).find(unknown + ":2: unknown field \"device\"") != std::string::npos);
  const auto type = temp_file("pt.toml", "concurrency = \"2\"\n");
  CHECK(profile_refusal(type).find(type + ":1: \"concurrency\" must be an integer") != std::string::npos);
  const auto one = temp_file("po.toml", "devices = \"h:1\"\n");
  CHECK(profile_refusal(one).find("\"devices\" must be an array of strings") != std::string::npos);
  const auto range = temp_file("pr.toml", "concurrency = 0\n");
  CHECK(profile_refusal(range).find("\"concurrency\" must be between 1 and 1024") != std::string::npos);
  const auto table = temp_file("pb.toml", "[items]\n0F01 = \"00\"\n");
  CHECK(profile_refusal(table).find(table + ":2: unknown table [items]") != std::string::npos);
  const auto bad_item = temp_file("pi.toml", "[application_items]\n0E01 = \"00\"\n");
  CHECK(profile_refusal(bad_item).find("outside 0F01-0FFF") != std::string::npos);
}
