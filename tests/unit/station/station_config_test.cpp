// Station settings: flags over environment over config file, validation, and the PIN sources.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "keyline/core/error.h"
#include "keyline/station/config.h"
#include "keyline/station/personalize.h"

namespace fs = std::filesystem;
using namespace keyline;
using namespace keyline::station;

namespace {

const char* const kEnv[] = {"KEYLINE_STATION_ID", "KEYLINE_STATION_DB",   "KEYLINE_HSM_MODULE",
                            "KEYLINE_HSM_TOKEN",  "KEYLINE_HSM_PIN_FILE", "KEYLINE_PKI_DIR",
                            "KEYLINE_BACKUPDB_URL", "KEYLINE_HW_TYPE",    "KEYLINE_KEY_SOURCE",
                            "KEYLINE_HSM_PIN", "KEYLINE_CHANNEL", "KEYLINE_CHIP_VENDORS"};

// Each test starts from an empty KEYLINE_* environment.
struct CleanEnv {
  CleanEnv() {
    for (const char* n : kEnv) ::unsetenv(n);
  }
  ~CleanEnv() {
    for (const char* n : kEnv) ::unsetenv(n);
  }
};

std::string temp_file(const std::string& name, const std::string& content) {
  const auto p = fs::temp_directory_path() / ("keyline-unit-station-" + std::to_string(::getpid()) + "-" + name);
  std::ofstream(p, std::ios::binary | std::ios::trunc) << content;
  return p.string();
}

}  // namespace

TEST_CASE("defaults apply when nothing is set") {
  CleanEnv env;
  StationConfig c;
  complete_config(c, "");
  CHECK(c.station_id == "station-1");
  CHECK(c.token_label == "keyline");
  CHECK(c.pki_dir == ".keyline/pki");
  CHECK(c.key_source == "generate");
  CHECK_FALSE(c.hsm_module.empty());
  CHECK_FALSE(c.hw_type.empty());
  CHECK(c.db.empty());
}

TEST_CASE("a flag beats the environment, which beats the config file") {
  CleanEnv env;
  const auto file = temp_file("prec.json",
                              R"({"station_id":"from-file","db":"dbname=file","pki_dir":"/file/pki",)"
                              R"("backupdb_url":"https://file:1","token_label":"filetoken"})");
  ::setenv("KEYLINE_STATION_DB", "dbname=env", 1);
  ::setenv("KEYLINE_PKI_DIR", "/env/pki", 1);
  StationConfig c;
  c.pki_dir = "/flag/pki";
  complete_config(c, file);
  CHECK(c.pki_dir == "/flag/pki");
  CHECK(c.db == "dbname=env");
  CHECK(c.station_id == "from-file");
  CHECK(c.backupdb_url == "https://file:1");
  CHECK(c.token_label == "filetoken");
  fs::remove(file);
}

TEST_CASE("bad settings are refused with the setting's name") {
  CleanEnv env;
  {
    StationConfig c;
    c.key_source = "cloud";
    CHECK_THROWS_AS(complete_config(c, ""), core::ConfigError);
  }
  {
    StationConfig c;
    c.station_id = "line 1; drop";
    try {
      complete_config(c, "");
      FAIL("bad station id accepted");
    } catch (const core::ConfigError& e) {
      CHECK(std::string(e.what()).find("station id") != std::string::npos);
    }
  }
  for (const char* hw : {"not-an-oid", "1.3.6.", "1..3", "7.1", "1", "1.3.6.1.x"}) {
    StationConfig c;
    c.hw_type = hw;
    INFO(hw);
    CHECK_THROWS_AS(complete_config(c, ""), core::ConfigError);
  }
  {
    StationConfig c;
    c.hw_type = "1.3.6.1.4.1.59999.7";
    complete_config(c, "");
    CHECK(c.hw_type == "1.3.6.1.4.1.59999.7");
  }
  {
    StationConfig c;
    c.station_id = std::string(65, 'a');
    CHECK_THROWS_AS(complete_config(c, ""), core::ConfigError);
  }
  {
    StationConfig c;
    CHECK_THROWS_AS(complete_config(c, "/nonexistent/keyline.json"), core::ConfigError);
    const auto notjson = temp_file("bad.json", "{not json");
    CHECK_THROWS_AS(complete_config(c, notjson), core::ConfigError);
    const auto wrongtype = temp_file("type.json", R"({"db": 5})");
    StationConfig c2;
    try {
      complete_config(c2, wrongtype);
      FAIL("a number accepted as db");
    } catch (const core::ConfigError& e) {
      CHECK(std::string(e.what()).find("\"db\"") != std::string::npos);
    }
    fs::remove(notjson);
    fs::remove(wrongtype);
  }
}

TEST_CASE("the PIN comes from the PIN file (first line only) or the environment, never empty") {
  CleanEnv env;
  StationConfig c;
  CHECK_THROWS_AS(read_pin(c), core::ConfigError);
  ::setenv("KEYLINE_HSM_PIN", "1234abcd", 1);
  CHECK(read_pin(c) == core::SecureBytes{'1', '2', '3', '4', 'a', 'b', 'c', 'd'});
  const auto f = temp_file("pin", "s3cret\r\nsecond line\n");
  c.pin_file = f;
  CHECK(read_pin(c) == core::SecureBytes{'s', '3', 'c', 'r', 'e', 't'});  // the file wins over the environment
  const auto empty = temp_file("empty.pin", "\n");
  c.pin_file = empty;
  CHECK_THROWS_AS(read_pin(c), core::ConfigError);
  c.pin_file = "/nonexistent/pin";
  CHECK_THROWS_AS(read_pin(c), core::ConfigError);
  fs::remove(f);
  fs::remove(empty);
}

TEST_CASE("step names are the ones errors and docs quote") {
  CHECK(std::string(step_name(Step::ReadDevice)) == "read-device");
  CHECK(std::string(step_name(Step::Claim)) == "claim");
  CHECK(std::string(step_name(Step::Attest)) == "attest");
  CHECK(std::string(step_name(Step::Backup)) == "backup");
  CHECK(std::string(step_name(Step::Publish)) == "publish");
  CHECK(std::string(step_name(Step::Done)) == "done");
}

TEST_CASE("the channel: scp11a by default, from flag, environment or file, only scp11a or plain") {
  CleanEnv env;
  {
    StationConfig c;
    complete_config(c, "");
    CHECK(c.channel == "scp11a");
    CHECK(c.chip_vendors.empty());
  }
  const auto file = temp_file("channel.json", R"({"channel":"plain","chip_vendors":"/file/vendors.pem"})");
  {
    StationConfig c;
    complete_config(c, file);
    CHECK(c.channel == "plain");
    CHECK(c.chip_vendors == "/file/vendors.pem");
  }
  ::setenv("KEYLINE_CHANNEL", "scp11a", 1);
  ::setenv("KEYLINE_CHIP_VENDORS", "/env/vendors.pem", 1);
  {
    StationConfig c;
    complete_config(c, file);
    CHECK(c.channel == "scp11a");
    CHECK(c.chip_vendors == "/env/vendors.pem");
  }
  for (const char* bad : {"SCP11a", "scp03", "tls", " plain"}) {
    StationConfig c;
    c.channel = bad;
    INFO(bad);
    try {
      complete_config(c, "");
      FAIL("channel accepted");
    } catch (const core::ConfigError& e) {
      CHECK(std::string(e.what()).find("channel") != std::string::npos);
    }
  }
  fs::remove(file);
}

TEST_CASE("personalizing: scp11a needs a vendor list, the device key source needs scp11a (usage errors)") {
  CleanEnv env;
  StationConfig c;
  complete_config(c, "");
  try {
    check_personalization_config(c);
    FAIL("scp11a without --chip-vendors accepted");
  } catch (const core::ConfigError& e) {
    CHECK(e.code() == core::ErrorCode::Usage);
    CHECK(core::exit_code_for(e.code()) == 2);
    CHECK(std::string(e.what()).find("--chip-vendors") != std::string::npos);
  }
  c.chip_vendors = "/some/vendors.pem";
  check_personalization_config(c);
  c.key_source = "device";
  check_personalization_config(c);
  c.channel = "plain";
  try {
    check_personalization_config(c);
    FAIL("device keys over the plain channel accepted");
  } catch (const core::ConfigError& e) {
    CHECK(e.code() == core::ErrorCode::Usage);
    CHECK(std::string(e.what()).find("scp11a") != std::string::npos);
  }
  c.key_source = "generate";
  c.chip_vendors.clear();
  check_personalization_config(c);  // plain needs no vendor list
}
