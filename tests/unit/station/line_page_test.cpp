// The line's metrics and its listeners (station/src/line_metrics.h, status_server.h; docs/station.md
// "Metrics and the line page"): the text the metrics render, the Last-Event-ID parser, and both
// listeners over real loopback sockets (the page, events that wait for a device to end, the cap on
// waiting events, read-only).
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "line_metrics.h"
#include "status_server.h"

using namespace keyline::station;
using namespace keyline::station::line_detail;

namespace {

bool has_line(const std::string& text, const std::string& line) {
  return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}

// One request on its own connection (Connection: close); the whole answer, head and body.
std::string http(const std::string& address, const std::string& request) {
  const auto colon = address.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<std::uint16_t>(std::stoi(address.substr(colon + 1))));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr);
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size()));
  std::string answer;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) answer.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return answer;
}

std::string get(const std::string& address, const std::string& path, const std::string& headers = {}) {
  return http(address, "GET " + path + " HTTP/1.1\r\nHost: " + address + "\r\nConnection: close\r\n" + headers + "\r\n");
}

std::string address_after(const std::string& printed, const std::string& prefix) {
  const std::regex re(prefix + "(127\\.0\\.0\\.1:[0-9]+)");
  std::smatch m;
  REQUIRE(std::regex_search(printed, m, re));
  return m[1];
}

}  // namespace

TEST_CASE("histogram buckets are cumulative and +Inf is the count") {
  Histogram h;
  h.observe(0.003);
  h.observe(0.2);
  h.observe(100);
  std::ostringstream o;
  h.render(o, "x_seconds", "step=\"claim\"");
  const auto t = o.str();
  CHECK(has_line(t, "x_seconds_bucket{step=\"claim\",le=\"0.0025\"} 0"));
  CHECK(has_line(t, "x_seconds_bucket{step=\"claim\",le=\"0.005\"} 1"));
  CHECK(has_line(t, "x_seconds_bucket{step=\"claim\",le=\"0.25\"} 2"));
  CHECK(has_line(t, "x_seconds_bucket{step=\"claim\",le=\"30\"} 2"));
  CHECK(has_line(t, "x_seconds_bucket{step=\"claim\",le=\"+Inf\"} 3"));
  CHECK(has_line(t, "x_seconds_count{step=\"claim\"} 3"));
  CHECK(has_line(t, "x_seconds_sum{step=\"claim\"} 100.203000"));
}

TEST_CASE("a device's way through the metrics: fixture states, reasons, publish classes, token timers") {
  LineMetrics m;
  m.device_started("127.0.0.1:4001");
  m.step_done(Step::ReadDevice, "4B4C0001000000000001");
  m.step_done(Step::Claim, "4B4C0001000000000001");
  DeviceResult r;
  r.chip_id = "4B4C0001000000000001";
  r.imei = "357805020000007";
  r.in_outbox = true;
  r.reached = Step::Record;
  m.device_ended(r);
  CHECK(m.fixture_states()["publishing"] == 1);
  m.device_published(r.chip_id);
  m.device_started("127.0.0.1:4002");
  DeviceResult bad;
  bad.error_code = 4012;
  bad.reached = Step::Backup;
  m.device_ended(bad);
  CHECK(m.fixture_states()["retrying"] == 1);
  m.device_failed(4012, "");  // a worker's own fixture (no chip read)
  m.publish_answered(201, "published", 0.01);
  m.publish_answered(409, "refused", 0.01);
  m.publish_answered(0, "unreachable", 2);
  set_token_metrics(&m);
  { const TokenTimer t(TokenOp::Sign); }
  CHECK(timed(TokenOp::Unwrap, [] { return 7; }) == 7);

  const auto fixtures = m.fixtures(10);
  REQUIRE(fixtures.size() == 2);
  CHECK(fixtures[0].state == "failed");  // busiest first: failed before done
  CHECK(fixtures[1].state == "done");
  CHECK(fixtures[1].imei == "357805020000007");

  std::ostringstream o;
  m.render(o);
  const auto t = o.str();
  CHECK(has_line(t, "keyline_station_devices_done_total 1"));
  CHECK(has_line(t, "keyline_station_devices_failed_total{reason=\"4012\"} 1"));
  CHECK(has_line(t, "keyline_station_step_duration_seconds_count{step=\"claim\"} 1"));
  CHECK(has_line(t, "keyline_station_step_duration_seconds_count{step=\"read-device\"} 1"));
  CHECK(has_line(t, "keyline_station_publish_total{outcome=\"published\",class=\"2xx\"} 1"));
  CHECK(has_line(t, "keyline_station_publish_total{outcome=\"refused\",class=\"4xx\"} 1"));
  CHECK(has_line(t, "keyline_station_publish_total{outcome=\"unreachable\",class=\"none\"} 1"));
  CHECK(has_line(t, "keyline_station_publish_duration_seconds_count 3"));
  CHECK(has_line(t, "keyline_station_token_operation_duration_seconds_count{op=\"sign\"} 1"));
  CHECK(has_line(t, "keyline_station_token_operation_duration_seconds_count{op=\"unwrap\"} 1"));
  CHECK(has_line(t, "keyline_station_fixtures{state=\"failed\"} 1"));
  CHECK(has_line(t, "keyline_station_fixtures{state=\"done\"} 1"));
  CHECK(t.find("# TYPE keyline_station_devices_failed_total counter\n") != std::string::npos);
}

TEST_CASE("a line's metrics destroyed are no longer the token timers' line") {
  {
    LineMetrics m;
    set_token_metrics(&m);
  }
  const TokenTimer t(TokenOp::Derive);  // would write into the destroyed object
}

TEST_CASE("Last-Event-ID: SEQ.ENDED as the server sends it, anything else is no id") {
  std::uint64_t seq = 0;
  std::int64_t ended = 0;
  CHECK(parse_event_id("12.5", seq, ended));
  CHECK(seq == 12);
  CHECK(ended == 5);
  CHECK(parse_event_id("999999999999999999.999999999999999999", seq, ended));
  for (const char* bad : {"", ".", "1.", ".1", "1.2.3", "-1.5", "1.-5", "1,5", " 1.5", "1.5 ", "0x1.5",
                          "9999999999999999999.1", "1.9999999999999999999", "18446744073709551616.0"})
    CHECK_MESSAGE(!parse_event_id(bad, seq, ended), bad);
}

TEST_CASE("a port alone binds loopback") {
  CHECK(listen_address("8080") == "127.0.0.1:8080");
  CHECK(listen_address("0.0.0.0:8080") == "0.0.0.0:8080");
  CHECK(listen_address("") == "");
}

TEST_CASE("the listeners over loopback: page, events, metrics, read-only, the waiting cap") {
  LineMetrics metrics;
  std::ostringstream printed;
  StatusServers s("127.0.0.1:0", "127.0.0.1:0", metrics, printed);
  const auto ops = address_after(printed.str(), "operations \\(metrics, healthz\\) on http://");
  const auto page = address_after(printed.str(), "line page on http://");

  const auto doc = get(page, "/");
  CHECK(doc.rfind("HTTP/1.1 200", 0) == 0);
  CHECK(doc.find("Content-Security-Policy: default-src 'none'") != std::string::npos);
  CHECK(doc.find("new EventSource(\"events\")") != std::string::npos);
  CHECK(get(page, "/nothing").rfind("HTTP/1.1 404", 0) == 0);
  CHECK(http(page, "POST /events HTTP/1.1\r\nHost: " + page + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .rfind("HTTP/1.1 405", 0) == 0);

  s.publish("{\"done\":1}", "# HELP g a gauge.\n# TYPE g gauge\ng 1\n", 1);
  const auto first = get(page, "/events");  // a new page: at once
  CHECK(first.find("Content-Type: text/event-stream") != std::string::npos);
  CHECK(first.find("\r\n\r\nretry: 250\nid: 1.1\ndata: {\"done\":1}\n\n") != std::string::npos);

  // A page that saw 1.1 gets the snapshot of the next device end.
  auto waiting =
      std::async(std::launch::async, [&] { return get(page, "/events", "Last-Event-ID: 1.1\r\n"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  s.publish("{\"done\":2}", "# HELP g a gauge.\n# TYPE g gauge\ng 2\n", 2);
  CHECK(waiting.get().find("id: 2.2\ndata: {\"done\":2}") != std::string::npos);

  // More pages waiting than the cap: the others are answered at once with the longer retry.
  std::vector<std::future<std::string>> many;
  for (int i = 0; i < StatusServers::kMaxWaiting + 2; ++i)
    many.push_back(
        std::async(std::launch::async, [&] { return get(page, "/events", "Last-Event-ID: 2.2\r\n"); }));
  int over_cap = 0;
  for (auto& f : many) over_cap += f.get().find("retry: 2000\n") != std::string::npos;
  CHECK(over_cap >= 1);
  CHECK(over_cap <= 2);  // 8 handler threads: 6 wait, the rest are over the cap

  const auto text = get(ops, "/metrics");
  CHECK(text.find("Content-Type: text/plain; version=0.0.4") != std::string::npos);
  CHECK(text.find("\ng 2\n") != std::string::npos);  // the line's gauges as last published
  CHECK(text.find("\nkeyline_station_page_events_over_cap_total " + std::to_string(over_cap) + "\n") !=
        std::string::npos);
  CHECK(get(ops, "/healthz").find("\r\n\r\nok\n") != std::string::npos);
  CHECK(get(ops, "/").rfind("HTTP/1.1 404", 0) == 0);
}
