#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include "keyline/core/json_log.h"

using namespace keyline::core::log;

namespace {

Poco::JSON::Object::Ptr parse(const std::string& line) {
  return Poco::JSON::Parser().parse(line).extract<Poco::JSON::Object::Ptr>();
}

}  // namespace

TEST_CASE("rfc3339_ms: UTC with milliseconds") {
  const auto t = std::chrono::system_clock::time_point(std::chrono::milliseconds(1764583200123LL));
  CHECK(rfc3339_ms(t) == "2025-12-01T10:00:00.123Z");
  CHECK(rfc3339_ms(std::chrono::system_clock::time_point{}) == "1970-01-01T00:00:00.000Z");
}

TEST_CASE("format_line: the fixed names first, chip and imei only when given, fields escaped") {
  const auto t = std::chrono::system_clock::time_point(std::chrono::milliseconds(5));
  const std::string line = format_line(t, Level::Warn, "keyline-station", "device_failed", "0102", "353456789012347",
                                       Fields().str("reason", "a \"quoted\"\nline").num("n", -3).flag("ok", false).real("s", 0.25));
  CHECK(line.rfind("{\"time\":\"1970-01-01T00:00:00.005Z\",\"level\":\"warn\",\"program\":\"keyline-station\","
                   "\"event\":\"device_failed\",\"chip\":\"0102\",\"imei\":\"353456789012347\",",
                   0) == 0);
  CHECK(line.find('\n') == std::string::npos);
  const auto o = parse(line);
  CHECK(o->getValue<std::string>("reason") == "a \"quoted\"\nline");
  CHECK(o->getValue<int>("n") == -3);
  CHECK(o->getValue<bool>("ok") == false);
  CHECK(o->getValue<double>("s") == 0.25);
  const std::string plain = format_line(t, Level::Info, "p", "start", "", "", Fields());
  CHECK(plain.find("chip") == std::string::npos);
  CHECK(plain.find("imei") == std::string::npos);
  CHECK(format_line(t, Level::Info, "p", "e", "", "", Fields().real("x", 1.0 / 0.0)).find("\"x\":null") != std::string::npos);
}

TEST_CASE("JsonLog to a file: one object per line, appended") {
  const std::string path = std::string(std::getenv("KEYLINE_BINARY_DIR") ? std::getenv("KEYLINE_BINARY_DIR") : "/tmp") +
                           "/unit_config_json_log.log";
  std::remove(path.c_str());
  {
    JsonLog log("keyline-device", path);
    log.write(Level::Info, "serve", Fields().str("listen", "127.0.0.1:9000"));
    log.device(Level::Error, "apdu_failed", "aa", "", Fields().num("sw", 0x6A80));
  }
  std::ifstream in(path);
  std::string a, b, c;
  REQUIRE(std::getline(in, a));
  REQUIRE(std::getline(in, b));
  CHECK_FALSE(std::getline(in, c));
  CHECK(parse(a)->getValue<std::string>("event") == "serve");
  CHECK(parse(b)->getValue<std::string>("chip") == "aa");
  CHECK(parse(b)->getValue<std::string>("level") == "error");
  CHECK(parse(b)->getValue<int>("sw") == 0x6A80);
}
