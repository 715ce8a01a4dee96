// A standard HTTP cache in front of the public DB (docs/scale.md, "Caches in front"): a private nginx
// with proxy_cache, configured as a CDN is (every answer kept 10 minutes unless the origin says
// otherwise), proxying to the real server program over TLS. Records and log tiles are immutable with
// strong ETags, so the cache answers them after one miss and answers If-None-Match with 304 on its
// own; errors carry Cache-Control: no-store, so a record published after a 404 is seen at once.

#include "tlog_fixture.h"

namespace {

// A private nginx (its own prefix, config and port, as scripts/bench_backupdb.sh starts one) caching
// what it proxies to `upstream` (https).
struct CachingProxy {
  std::string dir;
  std::string url;

  explicit CachingProxy(const std::string& upstream) {
    dir = pki().dir + "/nginx" + std::to_string(test::free_port());
    std::filesystem::create_directories(dir + "/logs");
    std::filesystem::create_directories(dir + "/cache");
    const int port = test::free_port();
    url = "http://127.0.0.1:" + std::to_string(port);
    std::ostringstream c;
    if (::geteuid() == 0) c << "user root;\n";
    c << "worker_processes 1;\npid " << dir << "/nginx.pid;\nerror_log " << dir << "/logs/error.log warn;\n"
      << "events { worker_connections 256; }\nhttp {\n  access_log off;\n"
      << "  client_body_temp_path " << dir << "/tmp_body;\n  proxy_temp_path " << dir << "/tmp_proxy;\n"
      << "  fastcgi_temp_path " << dir << "/tmp_fcgi;\n  uwsgi_temp_path " << dir << "/tmp_uwsgi;\n"
      << "  scgi_temp_path " << dir << "/tmp_scgi;\n"
      << "  proxy_cache_path " << dir << "/cache keys_zone=kl:1m;\n"
      << "  server {\n    listen 127.0.0.1:" << port << ";\n    location / {\n"
      << "      proxy_pass " << upstream << ";\n      proxy_http_version 1.1;\n"
      << "      proxy_set_header Connection \"\";\n"
      // nginx 1.22 matches an upstream certificate against DNS names only, and the fixture's server
      // certificate names 127.0.0.1 as an IP address: the loopback upstream is not verified here (the
      // test is about what the cache keeps; TLS to the public DB has its own tests).
      << "      proxy_ssl_verify off;\n"
      << "      proxy_cache kl;\n"
      // What a CDN does with an answer that names no lifetime: keep it. Only the origin's own
      // Cache-Control (which nginx puts above proxy_cache_valid) keeps an error out of the cache.
      << "      proxy_cache_valid any 10m;\n"
      << "      add_header X-Cache-Status $upstream_cache_status always;\n    }\n  }\n}\n";
    write_file(dir + "/nginx.conf", c.str());
    int rc = -1;
    const auto out = sh("nginx -p " + dir + " -c " + dir + "/nginx.conf 2>&1", &rc);
    REQUIRE_MESSAGE(rc == 0, "nginx (scripts/setup.sh installs it): " << out);
  }
  ~CachingProxy() { sh("nginx -p " + dir + " -c " + dir + "/nginx.conf -s stop 2>&1"); }

  http::Response get(const std::string& path, const std::map<std::string, std::string>& h = {}) const {
    http::ClientOptions o;
    o.base_url = url;
    o.connect_attempts = 3;
    return http::Client(o).get(path, h);
  }
};

// The public listener's requests the server counted for one route and status, from /metrics.
long served(const Server& s, const std::string& route, int status) {
  const std::string key = "keyline_backupdb_requests_total{route=\"" + route + "\",status=\"" +
                          std::to_string(status) + "\"} ";
  const auto m = s.metrics();
  const auto p = m.find(key);
  return p == std::string::npos ? 0 : std::stol(m.substr(p + key.size()));
}

}  // namespace

TEST_CASE("nginx proxy_cache in front: records and tiles hit after one miss, 304 from the cache, errors never cached") {
  static_cast<void>(&check_proof);  // the shared fixture's, for the proof tests
  static_cast<void>(&http_tiles);
  Database db;
  const auto label = new_key_label();
  const auto key = init_key(label);
  Server s(db, log_args(label));
  constexpr std::uint32_t kRecords = 20;
  publish_all(s, 5000, kRecords, 2);
  checkpoint_of(s, key, kRecords);
  CachingProxy proxy(s.url);

  // Warm-up: one miss each, then every read of every representation a hit the server never sees.
  const std::vector<std::string> subs = {"", "/backup", "/certificate"};
  for (std::uint32_t i = 0; i < kRecords; ++i)
    for (const auto& sub : subs) {
      const auto r = proxy.get("/v1/records/" + pki().record(5000 + i).chip_id.str() + sub);
      REQUIRE_MESSAGE(r.status == 200, slurp(proxy.dir + "/logs/error.log"));
      CHECK(r.header("x-cache-status") == "MISS");
    }
  const long origin_before = served(s, "record", 200);
  int hits = 0, reads = 0;
  for (int round = 0; round < 3; ++round)
    for (std::uint32_t i = 0; i < kRecords; ++i)
      for (const auto& sub : subs) {
        const auto r = proxy.get("/v1/records/" + pki().record(5000 + i).chip_id.str() + sub);
        ++reads;
        if (r.status == 200 && r.header("x-cache-status") == "HIT") ++hits;
      }
  CHECK(hits == reads);  // hit ratio 1.0 after warm-up
  CHECK(served(s, "record", 200) == origin_before);

  // If-None-Match with the strong ETag: the cache answers 304 itself; a wrong tag gets the body.
  const std::string chip0 = "/v1/records/" + pki().record(5000).chip_id.str();
  const auto full = proxy.get(chip0);
  const auto etag = full.header("etag");
  REQUIRE(etag.size() > 2);
  CHECK(etag.front() == '"');
  const auto nm = proxy.get(chip0, {{"If-None-Match", etag}});
  CHECK(nm.status == 304);
  CHECK(nm.header("x-cache-status") == "HIT");
  CHECK(nm.body.empty());
  CHECK(proxy.get(chip0, {{"If-None-Match", "\"0000\""}}).status == 200);

  // Tiles: immutable too.
  const std::string tile = "/v1/log/tile/0/000.p/" + std::to_string(kRecords);
  CHECK(proxy.get(tile).header("x-cache-status") == "MISS");
  const auto t = proxy.get(tile);
  CHECK(t.status == 200);
  CHECK(t.header("x-cache-status") == "HIT");
  CHECK(proxy.get(tile, {{"If-None-Match", t.header("etag")}}).status == 304);

  // Errors are the origin's answer each time: a 404 for a record not yet published, a 404 for a tile
  // beyond the tree, a 400; then the record is published (to the server, as stations do) and the
  // very next read through the cache has it, as has the tile once the checkpoint covers it.
  const auto late = pki().record(5000 + kRecords);
  const std::string late_path = "/v1/records/" + late.chip_id.str();
  const std::string next_tile = "/v1/log/tile/0/000.p/" + std::to_string(kRecords + 1);
  for (int i = 0; i < 2; ++i) {
    const auto missing = proxy.get(late_path);
    CHECK(missing.status == 404);
    CHECK(missing.header("cache-control") == "no-store");
    CHECK(missing.header("x-cache-status") == "MISS");
    CHECK(proxy.get(next_tile).status == 404);
    const auto bad = proxy.get("/v1/records/not-a-chip");
    CHECK(bad.status == 400);
    CHECK(bad.header("x-cache-status") == "MISS");
    // A refusal of the server's connection layer, not of the handler: 101 header fields (nginx passes
    // them, the server's max_header_fields is 100) get a 431 that the cache must not keep for the path,
    // or every later reader of it would get the 431 (the next round's 404 above is then a MISS again).
    std::map<std::string, std::string> many;
    for (int h = 0; h < 101; ++h) many["X-Pad-" + std::to_string(h)] = "1";
    const auto refused = proxy.get(late_path, many);
    CHECK(refused.status == 431);
    CHECK(refused.header("cache-control") == "no-store");
  }
  const auto pub = s.client("station")->post("/v1/records", late.to_json(), "application/json");
  REQUIRE(pub.status == 201);
  const auto now = proxy.get(late_path);
  CHECK(now.status == 200);
  CHECK(now.header("x-cache-status") == "MISS");
  checkpoint_of(s, key, kRecords + 1);
  CHECK(proxy.get(next_tile).status == 200);
  // The checkpoint moves: no-cache, so the cache asks the origin every time and never serves an old one.
  const auto cp = proxy.get("/v1/log/checkpoint");
  CHECK(cp.status == 200);
  CHECK(cp.header("x-cache-status") != "HIT");
  CHECK(tlog::open_checkpoint(cp.body, key, kOrigin).checkpoint.size == kRecords + 1);
}

// The other side of a cache: the cold read path (docs/scale.md, "Cold reads"). With no record cache
// and one database session for 32 workers, concurrent misses can only be answered in batches
// (backupdb/src/read_batch.h: a pipeline of lookups by chip ID, one statement for IMEIs); each reader
// must still get its own record, and an absent one its 404, in the same batch as the others.
TEST_CASE("cold reads in batches: --cache 0 --db-pool 1 --read-batch 32, 16 readers at once, each gets its own record or 404") {
  Database db;
  constexpr std::uint32_t kRecords = 24;
  {
    Server writer(db, {"--no-log"});
    publish_all(writer, 7000, kRecords, 2);
  }
  Server s(db, {"--no-log", "--cache", "0", "--db-pool", "1", "--threads", "32", "--read-batch", "32"});
  std::atomic<int> wrong{0}, reads{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 16; ++t) {
    ts.emplace_back([&, t] {
      auto c = s.client();
      for (std::uint32_t round = 0; round < 3; ++round)
        for (std::uint32_t i = 0; i <= kRecords; ++i) {  // i == kRecords: never published
          const auto n = 7000 + (i + static_cast<std::uint32_t>(t)) % (kRecords + 1);
          const auto rec = pki().record(n);
          const bool by_imei = (i + round) % 3 == 0;
          const auto r = c->get(by_imei ? "/v1/imei/" + rec.imei.str() : "/v1/records/" + rec.chip_id.str());
          ++reads;
          if (n == 7000 + kRecords) {
            if (r.status != 404) ++wrong;
          } else if (r.status != 200 || json(r.body)->getValue<std::string>("chip_id") != rec.chip_id.str() ||
                     json(r.body)->getValue<std::string>("imei") != rec.imei.str()) {
            ++wrong;
          }
        }
    });
  }
  for (auto& t : ts) t.join();
  CHECK(reads == 16 * 3 * (kRecords + 1));
  CHECK(wrong == 0);
}

namespace {

long metric(const Server& s, const std::string& name) {
  const auto m = s.metrics();
  const auto p = m.find("\n" + name + " ");
  return p == std::string::npos ? -1 : std::stol(m.substr(p + name.size() + 2));
}

}  // namespace

// A cache keys the request-target as sent: every spelling of a record's path the server answered
// would be one more cache entry and one more cold read of the origin (att20). Only the canonical
// one is answered; the others are a 400 the cache does not keep, before any database work.
TEST_CASE("non-canonical record and tile paths: 400, no-store, no lookup; the canonical path still answers") {
  Database db;
  {
    Server writer(db, {"--no-log"});
    publish_all(writer, 7100, 1, 1);
  }
  Server s(db, {"--no-log", "--cache", "0"});
  CachingProxy proxy(s.url);
  const auto rec = pki().record(7100);
  const std::string path = "/v1/records/" + rec.chip_id.str();
  auto c = s.client();
  REQUIRE(c->get(path).status == 200);
  const long lookups = metric(s, "keyline_backupdb_cache_misses_total");
  REQUIRE(lookups > 0);
  const std::vector<std::string> variants = {
      path + "/", "/" + path, "/v1//records/" + rec.chip_id.str(), path + "?", path + "?x=1",
      path + "/backup/", path + "/certificate?x", "/v1/imei/" + rec.imei.str() + "?x", "/v1/imei/" + rec.imei.str() + "/",
      "/v1/log/tile/0/000.p/1?x", "/v1/log/tile/0/000.p/1/", "/v1/log/checkpoint/", "/v1/ca?x",
      path + "/proof/?tree_size=1", "/v1/log//consistency?from=1"};
  for (const auto& v : variants) {
    CAPTURE(v);
    const auto r = c->get(v);
    CHECK(r.status == 400);
    CHECK(r.header("cache-control") == "no-store");
    CHECK(r.header("content-type") == "application/problem+json");
    CHECK(r.body.find("non-canonical-path") != std::string::npos);
    for (int i = 0; i < 2; ++i) {  // through the cache: the origin's answer each time
      const auto p = proxy.get(v);
      CHECK(p.status == 400);
      CHECK(p.header("x-cache-status") == "MISS");
    }
  }
  CHECK(metric(s, "keyline_backupdb_cache_misses_total") == lookups);  // none of them read the database
  CHECK(c->get(path).status == 200);
  CHECK(c->get("/v1/imei/" + rec.imei.str()).status == 200);
  CHECK(metric(s, "keyline_backupdb_cache_misses_total") == lookups + 1);  // by IMEI skips the cache
  // Parameters where a route takes them: the proof's tree_size (here no log: that route's own answer).
  CHECK(c->get(path + "/proof?tree_size=1").status != 400);

  // Content negotiation (RFC 9110 section 12.5.1): a PEM type with q=0 is not acceptable.
  const auto der = c->get(path + "/certificate", {{"Accept", "application/x-pem-file;q=0, application/pkix-cert"}});
  CHECK(der.status == 200);
  CHECK(der.header("content-type") == "application/pkix-cert");
  const auto pem = c->get(path + "/certificate", {{"Accept", "application/x-pem-file"}});
  CHECK(pem.header("content-type") == "application/x-pem-file");
}
