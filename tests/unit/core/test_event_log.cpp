// core::http::EventLog: a flood of connection events cannot flood the log (issue 12: an attacker's
// thousands of refused connections a second would otherwise each write a line).
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "keyline/core/event_log.h"

using namespace keyline::core;

namespace {

std::size_t count_lines(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  std::size_t n = 0;
  for (std::string l; std::getline(in, l);)
    if (l.find(needle) != std::string::npos) ++n;
  return n;
}

}  // namespace

TEST_CASE("event log: a burst beyond the budget is dropped and its size written once the next second opens") {
  char dir[] = "/tmp/keyline-eventlog-XXXXXX";
  REQUIRE(::mkdtemp(dir) != nullptr);
  const std::string path = std::string(dir) + "/log";
  {
    LogSink sink(path);
    http::EventLog log(sink, 5);
    http::Event e{http::Event::Kind::Refused, 503, "127.0.0.9", "over the per-client cap"};
    for (int i = 0; i < 1000; ++i) log.write(e, "public");
    CHECK(count_lines(path, "\"event\":\"refused\"") == 5);
    CHECK(log.suppressed_total() == 995);
    std::this_thread::sleep_for(std::chrono::milliseconds(1100));
    log.write(e, "public");
    CHECK(count_lines(path, "\"event\":\"suppressed\",\"count\":995") == 1);
    CHECK(count_lines(path, "\"event\":\"refused\"") == 6);
  }
  std::remove(path.c_str());
  ::rmdir(dir);
}
