// The attack2 review's findings against keyline-kps v2 (docs/kps.md "Tests"), each asserting the fixed
// behaviour: a Request-Id raced on two instances, a tarpit webhook receiver, the purge bound and
// expired envelopes, one device holding every long-poll slot, and unauthenticated answers bound to
// header values the caller chose. Each fails on the code before its fix.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <iterator>
#include <thread>

#include "keyline/core/http_server.h"
#include "keyline/core/http_service.h"
#include "keyline/core/kps_envelope.h"
#include "keyline/core/http_signature.h"
#include "kps_fixture.h"
#include "kps_world.h"
#include "testenv.h"

using namespace keyline;

namespace {

double secs_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// A TCP listener that accepts and never answers (a tarpit webhook receiver).
struct Tarpit {
  int fd = -1, port = 0;
  std::atomic<bool> stop{false};
  std::vector<int> conns;
  std::thread t;
  Tarpit() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t n = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
    port = ntohs(a.sin_port);
    ::listen(fd, 64);
    t = std::thread([this] {
      while (!stop) {
        int c = ::accept(fd, nullptr, nullptr);
        if (c >= 0) conns.push_back(c);
      }
    });
  }
  ~Tarpit() {
    stop = true;
    ::shutdown(fd, SHUT_RDWR);
    ::close(fd);
    t.join();
    for (int c : conns) ::close(c);
  }
};

struct Receiver {
  std::atomic<int> n{0};
  std::unique_ptr<core::http::Server> server;
  explicit Receiver(int port) {
    core::http::ServerOptions o;
    o.name = "attack-hook";
    o.listen = "127.0.0.1:" + std::to_string(port);
    o.tls_cert_file = world().tls().cert_file;
    o.tls_key_file = world().tls().key_file;
    server = std::make_unique<core::http::Server>(o, [this](const core::http::Request&) {
      ++n;
      return core::http::json_reply(200, "{}");
    });
    server->start();
  }
};

}  // namespace

// A tarpit receiver once held the single webhook loop for a timeout per notice (x310 the latency of
// every other device). Now each delivery runs on its own thread, one per chip: device 6's notice goes
// out while the tarpit still holds its first one.
TEST_CASE("attack webhook: one device's tarpit receiver does not stall another device's webhooks") {
  auto& w = world();
  test::PublicDb pdb;
  for (int i = 0; i < 8; ++i) pdb.put(w.device(i).record);
  auto cfg = world().config({"*:*:wh*"});
  cfg.backupdb = pdb.url();
  Kps k(cfg);
  const int good = test::free_port();
  Receiver rx(good);
  REQUIRE(w.put(w.device(6), k.port, "/v1/devices/self/webhook",
                "{\"uri\":\"https://127.0.0.1:" + std::to_string(good) + "/h\"}") == 200);
  auto t0 = std::chrono::steady_clock::now();
  requested(w.device(7), k.port, w.device(6), "wh-base");
  REQUIRE(eventually([&] { return rx.n.load() == 1; }, 20));
  const double base = secs_since(t0);
  Tarpit pit;
  REQUIRE(w.put(w.device(5), k.port, "/v1/devices/self/webhook",
                "{\"uri\":\"https://127.0.0.1:" + std::to_string(pit.port) + "/\"}") == 200);
  for (int i = 0; i < 4; ++i) requested(w.device(4), k.port, w.device(5), "wh-" + std::to_string(i));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the webhook loop has claimed the batch
  t0 = std::chrono::steady_clock::now();
  requested(w.device(7), k.port, w.device(6), "wh-victim");
  std::string settled;
  REQUIRE(eventually(
      [&] {
        if (rx.n.load() < 2) return false;
        settled = w.sql("SELECT count(*) FROM webhook_deliveries WHERE chip = $1 AND attempts >= 1", {w.device(5).str()});
        return true;
      },
      120));
  std::printf("attack webhook: device 6's latency %.2f s alone, %.2f s behind 4 notices to a tarpit; tarpit attempts "
              "settled before it: %s\n", base, secs_since(t0), settled.c_str());
  CHECK(std::stoi(settled) == 0);  // before the fix: all 4 timed out, one after the other, first
}

// The purge expired at most 200 transfers a pass (one a minute), and an envelope past its TTL was
// served until the purge caught it.
TEST_CASE("attack purge: every transfer past its TTL is expired in one pass") {
  auto& w = world();
  test::PublicDb pdb;
  for (int i = 0; i < 8; ++i) pdb.put(w.device(i).record);
  auto cfg = world().config({w.device(0).str() + ":" + w.device(1).str() + ":pg*"});
  cfg.backupdb = pdb.url();
  cfg.transfer_ttl = 3600;
  cfg.purge_interval_s = 60;
  {
    Kps k(cfg);
    for (int i = 0; i < 205; ++i) requested(w.device(1), k.port, w.device(0), "pg-" + std::to_string(i));
  }
  cfg.clock_offset_s = 2 * 3600;  // past the TTL; the devices' clocks stay where they are
  cfg.max_skew = 3 * 3600;
  Kps later(cfg);
  const auto open = [&] {
    return w.sql("SELECT count(*) FROM transfers WHERE state = 'requested' AND label LIKE 'pg-%'");
  };
  CHECK(eventually([&] { return open() == "0"; }));
  CHECK(w.sql("SELECT count(*) FROM transfers WHERE state = 'expired' AND label LIKE 'pg-%'") == "205");
}

TEST_CASE("attack expiry: past its TTL, before the purge, a transfer is 410 to fetch, show and deliver") {
  auto& w = world();
  test::PublicDb pdb;
  for (int i = 0; i < 8; ++i) pdb.put(w.device(i).record);
  auto cfg = world().config({w.device(0).str() + ":" + w.device(1).str() + ":ex*"});
  cfg.backupdb = pdb.url();
  cfg.purge_interval_s = 60;  // the pass at start ran; the next one is a minute away
  Kps k(cfg);
  const auto delivered = requested(w.device(1), k.port, w.device(0), "ex-delivered");
  REQUIRE(w.call(w.device(0), k.port, "GET", "/v1/transfers/" + delivered).status == 200);
  const auto env = w.envelope(w.device(0), w.device(1), delivered, "ex-delivered", core::SecureBytes(32, 0x77));
  REQUIRE(w.call(w.device(0), k.port, "POST", "/v1/transfers/" + delivered + "/key", std::string(env.begin(), env.end()),
                 "application/octet-stream").status == 200);
  const auto shown = requested(w.device(1), k.port, w.device(0), "ex-shown");
  const auto served = requested(w.device(1), k.port, w.device(0), "ex-served");
  REQUIRE(w.call(w.device(0), k.port, "GET", "/v1/transfers/" + served).status == 200);
  const auto env2 = w.envelope(w.device(0), w.device(1), served, "ex-served", core::SecureBytes(32, 0x78));
  w.sql("UPDATE transfers SET expires_at = now() - interval '5 seconds' WHERE label LIKE 'ex-%'");
  CHECK(w.call(w.device(1), k.port, "GET", "/v1/transfers/" + delivered + "/key").status == 410);
  CHECK(w.call(w.device(0), k.port, "GET", "/v1/transfers/" + shown).status == 410);
  CHECK(w.call(w.device(0), k.port, "POST", "/v1/transfers/" + served + "/key", std::string(env2.begin(), env2.end()),
               "application/octet-stream").status == 410);
  CHECK(state_of(delivered) == "delivered");  // the purge had not run: the routes refused by themselves
  CHECK(state_of(served) == "requested");
}

// Device 3 held all 4 waiter slots (threads 8 -> --max-waiters 4), so device 2's poll was answered
// at once, empty. Now a chip's newer poll releases its older one: device 2 waits and sees its notice.
TEST_CASE("attack long poll: one device holds one waiter slot, not all of them") {
  auto& w = world();
  test::PublicDb pdb;
  for (int i = 0; i < 8; ++i) pdb.put(w.device(i).record);
  auto cfg = world().config({"*:*:lp*"});
  cfg.backupdb = pdb.url();
  Kps k(cfg);
  std::vector<std::thread> hogs;
  for (int i = 0; i < 4; ++i)
    hogs.emplace_back([&] { w.call(w.device(3), k.port, "GET", "/v1/notifications?wait=10"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  Answer a;
  std::thread poll([&] { a = w.call(w.device(2), k.port, "GET", "/v1/notifications?wait=10"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  requested(w.device(1), k.port, w.device(2), "lp-1");
  poll.join();
  for (auto& t : hogs) t.join();
  CHECK(a.status == 200);
  CHECK(a.body.find("transfer-requested") != std::string::npos);
}

// Both instances inserted a transfer; the loser found the Request-Id taken, meant to roll back, and
// returned, which committed (a second transfer and its notice, named by no answer).
TEST_CASE("attack Request-Id race on two instances: one transfer per Request-Id") {
  auto& w = world();
  test::PublicDb pdb;
  for (int i = 0; i < 8; ++i) pdb.put(w.device(i).record);
  auto cfg = world().config({w.device(2).str() + ":" + w.device(3).str() + ":rid*"});
  cfg.backupdb = pdb.url();
  Kps k1(cfg), k2(cfg);
  for (int round = 0; round < 5; ++round) {
    const std::string rid = "5b3c8e6d-c10d-4858-9000-00000000000" + std::to_string(round);
    Answer a1, a2;
    std::thread t1([&] { a1 = ask(w.device(3), k1.port, w.device(2), "rid-x", {{"Request-Id", rid}}); });
    std::thread t2([&] { a2 = ask(w.device(3), k2.port, w.device(2), "rid-x", {{"Request-Id", rid}}); });
    t1.join();
    t2.join();
    CHECK(a1.status == 201);
    CHECK(a2.status == 201);
    CHECK(str(json(a1.body), "id") == str(json(a2.body), "id"));
  }
  CHECK(w.sql("SELECT count(*) FROM transfers WHERE label = 'rid-x'") == "5");
  CHECK(w.sql("SELECT count(*) FROM notifications n JOIN transfers t ON t.id = n.transfer_id WHERE t.label = 'rid-x' "
              "AND n.reason = 'transfer-requested'") == "5");
}

// An unauthenticated request got a 401 signed over the Keyline-Signature/Keyline-Nonce it chose (;req),
// which verified as the KPS's answer to that request: a signing oracle. Then it was signed without
// them (att12 finding 4: still a token signature per anonymous request); now it is not signed at all,
// and the agent's check refuses it as no answer.
TEST_CASE("attack oracle: an unauthenticated request's answer is not bound to header values it chose") {
  auto& w = world();
  Kps k(world().config({"*:*:or*"}));
  core::http::ClientOptions o;
  o.base_url = "https://127.0.0.1:" + std::to_string(k.port);
  o.ca_file = w.tls().ca_file;
  std::map<std::string, std::string> h{{"Keyline-Signature", "chosen-by-attacker"},
                                       {"Keyline-Nonce", "0123456789abcdef0123456789abcdef"}};
  const auto r = core::http::Client(o).get("/v1/notifications", h);
  CHECK(r.status == 401);
  namespace hs = core::http_signature;
  CHECK_THROWS(hs::verify_kps_response(r.status, hs::Headers(r.headers.begin(), r.headers.end()), r.body,
                                       hs::Headers(h.begin(), h.end()), w.sign_key(), hs::Algorithm::EcdsaP256Sha256,
                                       static_cast<std::int64_t>(std::time(nullptr))));
  CHECK(r.headers.count("signature") == 0);
  // An authenticated device's answer stays bound to its request.
  const auto ok = w.call(w.device(2), k.port, "GET", "/v1/notifications");
  CHECK(ok.status == 200);
  CHECK_NOTHROW(w.verify_answer(ok));
}

namespace {

core::http::Client anonymous_client(int port) {
  core::http::ClientOptions o;
  o.base_url = "https://127.0.0.1:" + std::to_string(port);
  o.ca_file = world().tls().ca_file;
  o.connect_attempts = 1;
  return core::http::Client(o);
}

bool signed_answer(const std::map<std::string, std::string>& headers) {
  return headers.count("signature") || headers.count("signature-input") || headers.count("content-digest");
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

// att12 finding 4: every anonymous answer (401, 404, 400, 405, 413) was signed with the token key, and
// 8 pipelining connections got 4,682 of them a second. Now only an answer to a request that passed
// authentication is signed; a device's and an owner's answers are signed as before.
TEST_CASE("attack signflood: an anonymous request's answer carries no signature; authenticated ones do") {
  auto& w = world();
  auto cfg = world().config({"*:*:sf*"});
  Kps k(cfg);
  auto client = anonymous_client(k.port);
  const std::map<std::string, std::string> none;
  const auto unknown = client.get("/v1/nothing", none);
  CHECK(unknown.status == 404);
  CHECK_FALSE(signed_answer(unknown.headers));
  const auto unauthenticated = client.get("/v1/notifications", none);
  CHECK(unauthenticated.status == 401);
  CHECK_FALSE(signed_answer(unauthenticated.headers));
  const auto both = client.get("/v1/notifications", {{"Authorization", "Bearer x"}, {"Keyline-Signature", "x"}});
  CHECK(both.status == 400);
  CHECK_FALSE(signed_answer(both.headers));
  const auto bad_token = client.get("/v1/transfers", {{"Authorization", "Bearer not-a-token"}});
  CHECK(bad_token.status == 401);
  CHECK_FALSE(signed_answer(bad_token.headers));
  const auto large = client.post("/v1/transfers", std::string(cfg.body_limit + 1, 'x'), "application/json", none);
  CHECK(large.status == 413);
  CHECK_FALSE(signed_answer(large.headers));

  const auto device = w.call(w.device(2), k.port, "GET", "/v1/notifications");
  CHECK(device.status == 200);
  CHECK_NOTHROW(w.verify_answer(device));
  const auto token_bytes = kps::account_add(cfg, "sf-" + std::to_string(k.port), {w.device(2).str()});
  const auto owner = w.owner(k.port, std::string(token_bytes.begin(), token_bytes.end()), "/v1/groups/nothing", "");
  CHECK(owner.headers.count("signature") == 1);  // an owner's answer: status and digest, as before
  // An authenticated request to a path it may not use is still answered signed.
  const auto wrong = w.call(w.device(2), k.port, "GET", "/v1/devices/nothing/else");
  CHECK(wrong.status >= 400);
  CHECK_NOTHROW(w.verify_answer(wrong));
}

// att12 INFO: a replay got "this nonce was seen already", a bad signature the generic text, so a 401
// told whether a captured request's signature was valid. Now both are the same bytes on the wire and
// the reason is in the log only.
TEST_CASE("attack 401 detail: a replayed and a bad-signature request get byte-identical problem bodies") {
  auto& w = world();
  Kps k(world().config({"*:*:rd*"}));
  const auto first = w.call(w.device(4), k.port, "GET", "/v1/notifications");
  REQUIRE(first.status == 200);
  const auto replayed = w.replay(first, k.port, "GET", "/v1/notifications", "", "");
  CHECK(replayed.status == 401);
  auto forged = first;
  bool changed = false;
  for (auto& [name, value] : forged.request_headers) {
    std::string lower = name;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (lower != "keyline-nonce") continue;
    value = "00112233445566778899aabbccddeeff";  // fresh, but not what was signed
    changed = true;
  }
  REQUIRE(changed);
  const auto bad_signature = w.replay(forged, k.port, "GET", "/v1/notifications", "", "");
  CHECK(bad_signature.status == 401);
  CHECK(replayed.body == bad_signature.body);
  CHECK(replayed.body.find("seen already") == std::string::npos);
  CHECK(eventually([&] { return read_file(w.dir() + "/kps.log").find("replayed nonce") != std::string::npos; }, 5));
}

// att12 finding 4: the KPS had no rate limit. Now a client address over --rate/--burst gets 429 with
// Retry-After (unsigned, before authentication) while another address is served.
TEST_CASE("attack rate limit: a client over its rate gets 429 while another address is served") {
  auto& w = world();
  auto cfg = world().config({"*:*:rl*"});
  cfg.rate = 0.5;
  cfg.burst = 3;
  cfg.trusted_proxies = {"127.0.0.1"};  // the client address is the X-Forwarded-For one
  Kps k(cfg);
  auto client = anonymous_client(k.port);
  const std::map<std::string, std::string> flooder{{"X-Forwarded-For", "10.9.0.1"}};
  for (int i = 0; i < 3; ++i) CHECK(client.get("/v1/nothing", flooder).status == 404);
  const auto limited = client.get("/v1/nothing", flooder);
  CHECK(limited.status == 429);
  CHECK(limited.headers.count("retry-after") == 1);
  if (limited.headers.count("retry-after")) CHECK(std::stoi(limited.headers.at("retry-after")) >= 1);
  CHECK(limited.body.find("rate-limited") != std::string::npos);
  CHECK_FALSE(signed_answer(limited.headers));
  // A signed device request from the same address is refused as well: the limit comes before the checks.
  CHECK(w.call(w.device(5), k.port, "GET", "/v1/notifications", {}, {}, flooder).status == 429);
  // Another address: a genuine device request is served and signed.
  const auto other = w.call(w.device(5), k.port, "GET", "/v1/notifications", {}, {}, {{"X-Forwarded-For", "10.9.0.2"}});
  CHECK(other.status == 200);
  CHECK_NOTHROW(w.verify_answer(other));
}
