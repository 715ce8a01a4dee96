// core/http_service.h: what the public DB and the KPS (and later servers) no longer write themselves.
// The servers' own behaviour through it is held by integration_backupdb, e2e.kps.transfer and the floods.
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>

#include "keyline/core/error.h"
#include "keyline/core/http_service.h"

using namespace keyline;
namespace http = core::http;

namespace {
std::string header(const http::Reply& r, const std::string& name) {
  for (const auto& [n, v] : r.headers)
    if (n == name) return v;
  return {};
}
}  // namespace

TEST_CASE("problem documents carry the service's type base, status and detail") {
  const http::Problems problem{"https://keyline.example/problems/kps/"};
  const auto r = problem(404, "not-found", "no such transfer", {{"code", "5001"}});
  CHECK(r.status == 404);
  CHECK(r.content_type == "application/problem+json");
  CHECK(r.body.find("\"type\":\"https://keyline.example/problems/kps/not-found\"") != std::string::npos);
  CHECK(r.body.find("\"detail\":\"no such transfer\"") != std::string::npos);
  CHECK(r.body.find("\"code\":\"5001\"") != std::string::npos);
  const auto m = problem.method_not_allowed("GET, HEAD");
  CHECK(m.status == 405);
  CHECK(header(m, "Allow") == "GET, HEAD");
  CHECK(problem.too_large(65536).body.find("the body exceeds 65536 bytes") != std::string::npos);
  CHECK(header(problem.unavailable("later", "5"), "Retry-After") == "5");
}

TEST_CASE("guarded: the database is 503 with Retry-After, anything else 500, their text stays in the log") {
  const http::Problems problem{"https://keyline.example/problems/"};
  const auto db = problem.guarded([]() -> http::Reply {
    throw core::DbError(core::ErrorCode::DbConnection, "could not connect to host 10.0.0.7 password=hunter2");
  });
  CHECK(db.status == 503);
  CHECK(header(db, "Retry-After") == "1");
  CHECK(db.body.find("10.0.0.7") == std::string::npos);
  CHECK(db.log_detail.find("10.0.0.7") != std::string::npos);
  const auto other = problem.guarded([]() -> http::Reply { throw std::runtime_error("std::bad_variant /srv/x"); });
  CHECK(other.status == 500);
  CHECK(other.body.find("/srv/x") == std::string::npos);
  CHECK(other.log_detail == "std::bad_variant /srv/x");
  CHECK(problem.guarded([] { return http::json_reply(200, "{}"); }).status == 200);
}

TEST_CASE("replies, path segments, media types") {
  const auto j = http::json_reply(201, "{\"a\":1}");
  CHECK(j.content_type == "application/json");
  CHECK(header(j, "Cache-Control") == "no-store");
  CHECK(http::json_reply(200, "{}", {{"ETag", "\"x\""}}).headers.size() == 1);
  CHECK(http::path_segments("/v1//records/ABC/") == std::vector<std::string>{"v1", "records", "ABC"});
  CHECK(http::path_segments("/").empty());
  http::Request q;
  q.headers = {{"content-type", "application/json; charset=utf-8"}};
  CHECK(http::has_media_type(q, "application/json"));
  CHECK_FALSE(http::has_media_type(q, "application/octet-stream"));
  q.headers = {{"content-type", "application/jsonx"}};
  CHECK_FALSE(http::has_media_type(q, "application/json"));
  CHECK_FALSE(http::has_media_type(http::Request{}, "application/json"));
}

// A client controls the target and (through a trusted proxy) its address; neither may break the
// line out of its JSON string (a forged log entry).
TEST_CASE("the access line: fields in order, every value escaped, peer only when forwarded") {
  http::Request q;
  q.method = "GET";
  q.target = "/v1/records/x\",\"status\":200}\n{\"forged";
  q.client_address = q.peer_address = "127.0.0.1";
  http::Reply r;
  r.status = 404;
  r.body = "12345";
  r.log_detail = "line\nbreak";
  const auto line = http::access_line(q, r, std::chrono::microseconds(1500), {{"route", "record"}});
  CHECK(line.find('\n') == std::string::npos);
  CHECK(line.find("\\\",\\\"status\\\":200}\\n{\\\"forged") != std::string::npos);
  CHECK(line.find("\"route\":\"record\",\"status\":404,\"bytes\":5,\"ms\":1.5") != std::string::npos);
  CHECK(line.find("\"detail\":\"line\\nbreak\"") != std::string::npos);
  CHECK(line.find("\"peer\"") == std::string::npos);
  q.client_address = "203.0.113.9";
  CHECK(http::access_line(q, r, {}).find("\"client\":\"203.0.113.9\",\"peer\":\"127.0.0.1\"") != std::string::npos);
}

TEST_CASE("the public listener: limits from the settings, TLS files checked") {
  http::ListenerSettings s;
  s.threads = 3;
  const auto plain = http::public_listener("keyline-x", "127.0.0.1:0", s, 4096, {"10.0.0.1"}, {});
  CHECK(plain.limits.max_body_bytes == 4096);
  CHECK(plain.limits.workers == 3);
  CHECK(plain.tls_cert_file.empty());
  CHECK(plain.trusted_proxies == std::vector<std::string>{"10.0.0.1"});
  CHECK_THROWS_AS(http::public_listener("keyline-x", "127.0.0.1:0", s, 4096, {}, {"/nonexistent/cert.pem", "k", ""}),
                  core::ConfigError);
}

TEST_CASE("metrics replies and reads") {
  const auto m = http::metrics_reply("keyline_x 1\n");
  CHECK(m.status == 200);
  CHECK(m.content_type == "text/plain; version=0.0.4");
  CHECK(header(m, "Cache-Control") == "no-store");
  http::Request q;
  for (const char* method : {"GET", "HEAD"}) {
    q.method = method;
    CHECK(http::is_read(q));
  }
  for (const char* method : {"POST", "get", "PUT", ""}) {
    q.method = method;
    CHECK_FALSE(http::is_read(q));
  }
}
