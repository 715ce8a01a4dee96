// keyline-kps v2 in process (docs/kps.md "Tests"): two KPS instances on one PostgreSQL database, real
// TLS and sockets, the public DB as the directory of transport certificates, the KPS signing key on
// SoftHSM. Each test is an attack or a failure the issue names (#17), now refused or survived.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <botan/hex.h>
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <thread>

#include "keyline/core/cert_profile.h"
#include "keyline/core/http_service.h"
#include "keyline/core/http_signature.h"
#include "keyline/core/kps_envelope.h"
#include "kps_fixture.h"
#include "kps_world.h"
#include "testenv.h"

using namespace keyline;

namespace {

kps::Config config(const std::vector<std::string>& allow) { return world().config(allow); }

core::SecureBytes a_key(std::uint8_t fill) { return core::SecureBytes(32, fill); }

// S1-E5 as the source agent does them: the transport certificate must be the target's from its record.
Answer serve(const Device& source, const Device& target, int port, const std::string& id,
             const std::string& label = kLabel, std::uint8_t fill = 0x42) {
  const auto got = world().call(source, port, "GET", "/v1/transfers/" + id);
  REQUIRE_MESSAGE(got.status == 200, got.body);
  world().verify_answer(got);
  const auto certs = core::parse_certificates_pem(str(json(got.body), "transport_certificates"));
  REQUIRE(certs.size() == 2);
  CHECK(certs[0] == target.transport);
  const auto env = world().envelope(source, target, id, label, a_key(fill));
  return world().call(source, port, "POST", "/v1/transfers/" + id + "/key", std::string(env.begin(), env.end()),
                      "application/octet-stream");
}

// E8-E10 as the target agent does them; returns the key.
core::SecureBytes receive(const Device& target, const Device& source, int port, const std::string& id,
                          const std::string& label = kLabel) {
  const auto got = world().call(target, port, "GET", "/v1/transfers/" + id + "/key");
  REQUIRE_MESSAGE(got.status == 200, got.body);
  world().verify_answer(got);
  const auto env = core::kps_envelope::parse(core::Bytes(got.body.begin(), got.body.end()));
  const auto tk = target.transport_key->get_x();
  const auto key = core::kps_envelope::verify_and_open(env, {id, label, source.chip, target.chip},
                                                       core::load_certificates_pem(world().dir() + "/root.pem"),
                                                       core::SecureBytes(tk.begin(), tk.end()));
  const auto ack = world().call(target, port, "POST", "/v1/transfers/" + id + "/ack");
  REQUIRE_MESSAGE(ack.status == 200, ack.body);
  return key;
}

std::string pg_dump() {
  const std::string dump = world().dir() + "/kps.dump";
  const std::string cmd = "/usr/lib/postgresql/15/bin/pg_dump '" + world().db() + "' > '" + dump + "'";
  REQUIRE(std::system(cmd.c_str()) == 0);
  return test::read_file(dump);
}

std::vector<std::string> notice_reasons(const Device& d, int port) {
  const auto a = world().call(d, port, "GET", "/v1/notifications");
  REQUIRE(a.status == 200);
  std::vector<std::string> out;
  const auto arr = json(a.body)->getArray("notifications");
  for (std::size_t i = 0; i < arr->size(); ++i)
    out.push_back(arr->getObject(static_cast<unsigned>(i))->getValue<std::string>("reason"));
  return out;
}

}  // namespace

TEST_CASE("a key moves A -> B with the transport certificate from the public DB; the DB keeps no key, after ack no envelope") {
  auto& w = world();
  test::PublicDb pdb;
  for (int i = 0; i < 6; ++i) pdb.put(w.device(i).record);
  auto cfg = config({w.device(0).str() + ":" + w.device(1).str() + ":" + kLabel});
  cfg.backupdb = pdb.url();
  Kps k(cfg);
  const auto id = requested(w.device(1), k.port, w.device(0));
  const auto up = serve(w.device(0), w.device(1), k.port, id);
  REQUIRE_MESSAGE(up.status == 200, up.body);
  w.verify_answer(up);
  const std::string envelope_hex = w.sql("SELECT encode(ciphertext, 'hex') FROM transfers WHERE id = $1::uuid", {id});
  CHECK(envelope_hex.size() > 100);
  CHECK(receive(w.device(1), w.device(0), k.port, id) == a_key(0x42));
  CHECK(state_of(id) == "acknowledged");
  CHECK(w.sql("SELECT count(*) FROM transfers WHERE ciphertext IS NOT NULL AND id = $1::uuid", {id}) == "0");
  CHECK(w.sql("SELECT string_agg(step, ',' ORDER BY id) FROM audit WHERE transfer_id = $1::uuid", {id}) ==
        "ac1,requested,ac2-early,ac2,delivered,acknowledged");

  // pg_dump of the whole database: neither the key nor the envelope.
  const std::string text = pg_dump();
  CHECK(text.find("audit") != std::string::npos);
  CHECK(text.find(Botan::hex_encode(a_key(0x42).data(), 32, false)) == std::string::npos);
  CHECK(text.find(Botan::hex_encode(a_key(0x42).data(), 32, true)) == std::string::npos);
  CHECK(text.find(envelope_hex.substr(0, 64)) == std::string::npos);
}

TEST_CASE("a signed request replayed to the other KPS on the same database is refused") {
  auto& w = world();
  test::PublicDb pdb;
  pdb.put(w.device(1).record);
  auto cfg = config({w.device(0).str() + ":" + w.device(1).str() + ":*"});
  cfg.backupdb = pdb.url();
  Kps k1(cfg), k2(cfg);
  const std::string body = "{\"source\":\"" + w.device(0).str() + "\",\"label\":\"replayed\"}";
  const auto first = w.call(w.device(1), k1.port, "POST", "/v1/transfers", body, "application/json");
  REQUIRE(first.status == 201);
  const auto again = w.replay(first, k2.port, "POST", "/v1/transfers", body, "application/json");
  CHECK(again.status == 401);
  // Not signed: the request failed authentication (docs/kps.md "Signed answers"), so the agent
  // refuses the answer as no answer.
  CHECK(again.headers.count("signature") == 0);
  CHECK_THROWS(w.verify_answer(again));
  const auto restarted = w.replay(first, k1.port, "POST", "/v1/transfers", body, "application/json");
  CHECK(restarted.status == 401);
  CHECK(w.sql("SELECT count(*) FROM transfers WHERE label = 'replayed'") == "1");
}

TEST_CASE("a Request-Id retry returns the first transfer, on either KPS, and never makes a second") {
  auto& w = world();
  test::PublicDb pdb;
  pdb.put(w.device(2).record);
  auto cfg = config({w.device(0).str() + ":" + w.device(2).str() + ":*"});
  cfg.backupdb = pdb.url();
  Kps k1(cfg), k2(cfg);
  const std::map<std::string, std::string> rid = {{"Request-Id", "0b7c1c8e-2f3a-4d5e-8f90-a1b2c3d4e5f6"}};
  const auto a = ask(w.device(2), k1.port, w.device(0), "idem", rid);
  REQUIRE(a.status == 201);
  const auto b = ask(w.device(2), k2.port, w.device(0), "idem", rid);
  CHECK(b.status == 201);
  CHECK(str(json(b.body), "id") == str(json(a.body), "id"));
  w.verify_answer(b);
  CHECK(w.sql("SELECT count(*) FROM transfers WHERE label = 'idem'") == "1");
  CHECK(ask(w.device(2), k1.port, w.device(0), "other", rid).status == 422);  // same Request-Id, other body
  CHECK(ask(w.device(2), k1.port, w.device(0), "idem", {{"Request-Id", "not-a-uuid"}}).status == 400);
  // Another caller's Request-Id space is its own.
  pdb.put(w.device(3).record);
}

TEST_CASE("the KPS killed between delivery and acknowledgement: the other delivers it once") {
  auto& w = world();
  test::PublicDb pdb;
  pdb.put(w.device(3).record);
  auto cfg = config({w.device(0).str() + ":" + w.device(3).str() + ":*"});
  cfg.backupdb = pdb.url();
  auto k1 = std::make_unique<Kps>(cfg);
  Kps k2(cfg);
  const auto id = requested(w.device(3), k1->port, w.device(0), "crash");
  REQUIRE(serve(w.device(0), w.device(3), k1->port, id, "crash", 0x33).status == 200);
  k1.reset();  // gone before the target came
  CHECK(receive(w.device(3), w.device(0), k2.port, id, "crash") == a_key(0x33));
  const auto again = w.call(w.device(3), k2.port, "GET", "/v1/transfers/" + id + "/key");
  CHECK(again.status == 410);
  CHECK(w.sql("SELECT count(*) FROM audit WHERE transfer_id = $1::uuid AND step = 'delivered'", {id}) == "1");
  CHECK(w.sql("SELECT count(*) FROM audit WHERE transfer_id = $1::uuid AND step = 'acknowledged'", {id}) == "1");
}

TEST_CASE("the policy covers labels: a target allowed one key of a source does not get its other key") {
  auto& w = world();
  test::PublicDb pdb;
  pdb.put(w.device(1).record);
  auto cfg = config({w.device(0).str() + ":" + w.device(1).str() + ":" + kLabel});
  cfg.backupdb = pdb.url();
  Kps k(cfg);
  const auto refused = ask(w.device(1), k.port, w.device(0), "root-key");
  CHECK(refused.status == 403);
  w.verify_answer(refused);
  CHECK(w.sql("SELECT count(*) FROM transfers WHERE label = 'root-key'") == "0");
  // A v1 rule without a label does not start.
  CHECK_THROWS_AS(kps::Instance(config({w.device(0).str() + ":" + w.device(1).str()})), core::ConfigError);
}

TEST_CASE("AC2 refused before the transport certificate: the source never sees it, nor can it deliver") {
  auto& w = world();
  test::PublicDb pdb;
  pdb.put(w.device(4).record);
  auto cfg = config({});
  cfg.backupdb = pdb.url();
  cfg.policy = w.dir() + "/ac1-only.policy";
  std::FILE* f = std::fopen(cfg.policy.c_str(), "w");
  std::fprintf(f, "request %s %s *\n", w.device(0).str().c_str(), w.device(4).str().c_str());
  std::fclose(f);
  Kps k(cfg);
  const auto id = requested(w.device(4), k.port, w.device(0), "ac2");
  const auto shown = w.call(w.device(0), k.port, "GET", "/v1/transfers/" + id);
  CHECK(shown.status == 403);
  w.verify_answer(shown);
  CHECK(shown.body.find("BEGIN CERTIFICATE") == std::string::npos);
  CHECK(state_of(id) == "refused");
  const auto again = w.call(w.device(0), k.port, "GET", "/v1/transfers/" + id);
  CHECK(again.status == 200);
  CHECK(again.body.find("BEGIN CERTIFICATE") == std::string::npos);
  const auto env = w.envelope(w.device(0), w.device(4), id, "ac2", a_key(1));
  const auto up = w.call(w.device(0), k.port, "POST", "/v1/transfers/" + id + "/key", std::string(env.begin(), env.end()),
                         "application/octet-stream");
  CHECK(up.status == 409);
  CHECK(w.sql("SELECT count(*) FROM audit WHERE transfer_id = $1::uuid AND step = 'ac2-early' AND detail LIKE 'refused%'",
              {id}) == "1");
  const auto reasons = notice_reasons(w.device(4), k.port);
  CHECK(std::find(reasons.begin(), reasons.end(), "transfer-refused") != reasons.end());
}

TEST_CASE("an envelope for another transfer or signed by another device is refused at upload") {
  auto& w = world();
  test::PublicDb pdb;
  pdb.put(w.device(1).record);
  auto cfg = config({w.device(0).str() + ":" + w.device(1).str() + ":*"});
  cfg.backupdb = pdb.url();
  Kps k(cfg);
  const auto id = requested(w.device(1), k.port, w.device(0), "env");
  REQUIRE(w.call(w.device(0), k.port, "GET", "/v1/transfers/" + id).status == 200);
  auto post = [&](const core::Bytes& e) {
    return w.call(w.device(0), k.port, "POST", "/v1/transfers/" + id + "/key", std::string(e.begin(), e.end()),
                  "application/octet-stream")
        .status;
  };
  CHECK(post(w.envelope(w.device(0), w.device(1), id, "other-label", a_key(1))) == 422);
  CHECK(post(w.envelope(w.device(5), w.device(1), id, "env", a_key(1))) == 422);  // another source's envelope
  CHECK(post(core::Bytes{'K', 'L', 'K', 'E', 9}) == 400);
  CHECK(state_of(id) == "requested");
}

TEST_CASE("expiry with a simulated clock: the purge expires the envelope, with audit rows and notices to both") {
  auto& w = world();
  test::PublicDb pdb;
  pdb.put(w.device(5).record);
  auto cfg = config({w.device(0).str() + ":" + w.device(5).str() + ":*"});
  cfg.backupdb = pdb.url();
  cfg.transfer_ttl = 3600;
  std::string id;
  {
    Kps k(cfg);
    id = requested(w.device(5), k.port, w.device(0), "expiring");
    REQUIRE(serve(w.device(0), w.device(5), k.port, id, "expiring").status == 200);
  }
  cfg.clock_offset_s = 2 * 3600;  // two hours later
  cfg.max_skew = 3 * 3600;        // the devices' clocks stay where they are
  Kps later(cfg);
  CHECK(eventually([&] { return state_of(id) == "expired"; }));
  CHECK(w.sql("SELECT count(*) FROM transfers WHERE id = $1::uuid AND ciphertext IS NULL", {id}) == "1");
  CHECK(w.sql("SELECT count(*) FROM audit WHERE transfer_id = $1::uuid AND step = 'expired'", {id}) == "1");
  CHECK(w.sql("SELECT count(*) FROM notifications WHERE transfer_id = $1::uuid AND reason = 'transfer-expired'", {id}) ==
        "2");
  CHECK(w.call(w.device(5), later.port, "GET", "/v1/transfers/" + id + "/key").status == 410);
  CHECK_THROWS_AS(kps::Instance([&] {
                    auto c = cfg;
                    c.transfer_ttl = 31 * 24 * 3600;
                    return c;
                  }()),
                  core::ConfigError);
}

TEST_CASE("an owner's group transfer to 3 targets; a forged or foreign owner token is refused") {
  auto& w = world();
  test::PublicDb pdb;
  for (int i = 1; i <= 3; ++i) pdb.put(w.device(i).record);
  auto cfg = config({w.device(0).str() + ":*:shared"});
  cfg.backupdb = pdb.url();
  Kps k(cfg);
  const auto token_bytes = kps::account_add(cfg, "alice-" + std::to_string(k.port),
                                            {w.device(0).str(), w.device(1).str(), w.device(2).str(), w.device(3).str()});
  const std::string token(token_bytes.begin(), token_bytes.end());
  CHECK(token.size() == 47);
  CHECK(pg_dump().find(token.substr(4)) == std::string::npos);  // only its SHA-256 is kept
  const std::string body = "{\"source\":\"" + w.device(0).str() + "\",\"label\":\"shared\",\"targets\":[\"" +
                           w.device(1).str() + "\",\"" + w.device(2).str() + "\",\"" + w.device(3).str() + "\"]}";
  const auto made = w.owner(k.port, token, "/v1/transfers", body);
  REQUIRE_MESSAGE(made.status == 201, made.body);
  const auto group = json(made.body);
  const auto transfers = group->getArray("transfers");
  REQUIRE(transfers->size() == 3);
  for (unsigned i = 0; i < 3; ++i) {
    const auto t = transfers->getObject(i);
    const auto& target = w.device(static_cast<int>(i) + 1);
    REQUIRE(str(t, "target") == target.str());
    REQUIRE(serve(w.device(0), target, k.port, str(t, "id"), "shared", 0x60).status == 200);
    if (i < 2) CHECK(receive(target, w.device(0), k.port, str(t, "id"), "shared") == a_key(0x60));
  }
  const auto status = w.owner(k.port, token, "/v1/groups/" + str(group, "group_id"), "");
  REQUIRE(status.status == 200);
  CHECK(status.body.find("\"state\":\"acknowledged\"") != std::string::npos);
  CHECK(status.body.find("\"state\":\"delivered\"") != std::string::npos);  // the third, on its own

  std::string forged = token;
  forged[10] = forged[10] == 'A' ? 'B' : 'A';
  CHECK(w.owner(k.port, forged, "/v1/transfers", body).status == 401);
  CHECK(w.owner(k.port, "not-a-token", "/v1/transfers", body).status == 401);
  const std::string foreign = "{\"source\":\"" + w.device(0).str() + "\",\"label\":\"shared\",\"targets\":[\"" +
                              w.device(5).str() + "\"]}";
  CHECK(w.owner(k.port, token, "/v1/transfers", foreign).status == 403);
  kps::account_devices(cfg, "alice-" + std::to_string(k.port), {}, {w.device(3).str()});
  CHECK(w.owner(k.port, token, "/v1/transfers", body).status == 403);  // no longer owns the third target
  kps::account_remove(cfg, "alice-" + std::to_string(k.port));
  CHECK(w.owner(k.port, token, "/v1/transfers", body).status == 401);
  CHECK(w.sql("SELECT count(*) FROM accounts WHERE token_sha256 = $1", {token}) == "0");
}

TEST_CASE("notices: acking one leaves the others; another device cannot ack; a long poll wakes on a notice") {
  auto& w = world();
  test::PublicDb pdb;
  pdb.put(w.device(2).record);
  pdb.put(w.device(3).record);
  auto cfg = config({w.device(4).str() + ":*:*"});
  cfg.backupdb = pdb.url();
  Kps k1(cfg), k2(cfg);
  // Drain the source's notices from earlier tests.
  for (;;) {
    const auto a = w.call(w.device(4), k1.port, "GET", "/v1/notifications");
    const auto arr = json(a.body)->getArray("notifications");
    if (arr->size() == 0) break;
    for (std::size_t i = 0; i < arr->size(); ++i)
      w.call(w.device(4), k1.port, "POST",
             "/v1/notifications/" + std::to_string(arr->getObject(static_cast<unsigned>(i))->getValue<long>("id")) + "/ack");
  }
  std::atomic<int> polled{-1};
  std::thread poller([&] {
    const auto a = w.call(w.device(4), k2.port, "GET", "/v1/notifications?wait=20");
    polled = a.status == 200 ? static_cast<int>(json(a.body)->getArray("notifications")->size()) : -2;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  requested(w.device(2), k1.port, w.device(4), "poll-1");  // on the other KPS
  poller.join();
  CHECK(polled == 1);
  requested(w.device(3), k1.port, w.device(4), "poll-2");
  const auto list = w.call(w.device(4), k1.port, "GET", "/v1/notifications");
  const auto arr = json(list.body)->getArray("notifications");
  REQUIRE(arr->size() == 2);
  const auto first = std::to_string(arr->getObject(0)->getValue<long>("id"));
  CHECK(w.call(w.device(2), k1.port, "POST", "/v1/notifications/" + first + "/ack").status == 404);  // not its own
  CHECK(w.call(w.device(4), k1.port, "POST", "/v1/notifications/" + first + "/ack").status == 200);
  CHECK(w.call(w.device(4), k1.port, "POST", "/v1/notifications/" + first + "/read").status == 200);  // v1 alias, again
  CHECK(notice_reasons(w.device(4), k1.port).size() == 1);
  CHECK(w.call(w.device(4), k1.port, "GET", "/v1/notifications?wait=31").status == 400);
}

namespace {

// A webhook receiver on a fixed port (HTTPS, the test CA), recording what it got.
struct Receiver {
  std::mutex mutex;
  std::vector<core::http::Request> got;
  std::unique_ptr<core::http::Server> server;
  explicit Receiver(int port) {
    core::http::ServerOptions o;
    o.name = "kps-test-hook";
    o.listen = "127.0.0.1:" + std::to_string(port);
    o.tls_cert_file = world().tls().cert_file;
    o.tls_key_file = world().tls().key_file;
    server = std::make_unique<core::http::Server>(o, [this](const core::http::Request& r) {
      std::lock_guard<std::mutex> lock(mutex);
      got.push_back(r);
      return core::http::json_reply(200, "{}");
    });
    server->start();
  }
  std::size_t count() {
    std::lock_guard<std::mutex> lock(mutex);
    return got.size();
  }
};

std::string delivery_state(const std::string& chip) {
  return world().sql("SELECT state || ':' || attempts FROM webhook_deliveries WHERE chip = $1 ORDER BY id DESC LIMIT 1",
                     {chip});
}

}  // namespace

TEST_CASE("a webhook receiver down then up gets the signed notice after retries; one never up is dead-lettered") {
  auto& w = world();
  test::PublicDb pdb;
  pdb.put(w.device(1).record);
  pdb.put(w.device(2).record);
  auto cfg = config({w.device(5).str() + ":*:hook*", w.device(3).str() + ":*:hook*"});
  cfg.backupdb = pdb.url();
  cfg.webhook_tries = 3;
  Kps k(cfg);
  const int port = test::free_port();
  const std::string uri = "https://127.0.0.1:" + std::to_string(port) + "/hook";
  REQUIRE(w.put(w.device(5), k.port, "/v1/devices/self/webhook", "{\"uri\":\"" + uri + "\"}") == 200);
  CHECK(w.put(w.device(5), k.port, "/v1/devices/self/webhook", "{\"uri\":\"http://127.0.0.1/\"}") == 400);
  const auto id = requested(w.device(1), k.port, w.device(5), "hook-1");
  CHECK(eventually([&] { return delivery_state(w.device(5).str()) == "pending:2"; }));  // down: tried twice
  Receiver receiver(port);
  REQUIRE(eventually([&] { return receiver.count() == 1; }));
  // The delivery is settled on its own thread after the receiver answered (webhooks.cpp): wait for it.
  CHECK(eventually([&] { return delivery_state(w.device(5).str()) == "done:3"; }));
  CHECK(receiver.count() == 1);
  const auto& r = receiver.got[0];
  CHECK(r.path == "/hook");
  CHECK(r.body.find(id) != std::string::npos);
  namespace hs = core::http_signature;
  hs::Message m;
  m.method = "POST";
  m.authority = "127.0.0.1:" + std::to_string(port);
  m.path = "/hook";
  m.headers = hs::Headers(r.headers.begin(), r.headers.end());
  const auto params = hs::verify_message("kps", m, nullptr, w.sign_key(), hs::Algorithm::EcdsaP256Sha256);
  CHECK(params.components.size() == 3);
  hs::verify_content_digest(r.get("content-digest"), r.body);
  // The webhook did not acknowledge: the notice is still there for the device.
  CHECK(notice_reasons(w.device(5), k.port).size() >= 1);

  const int dead_port = test::free_port();
  REQUIRE(w.put(w.device(3), k.port, "/v1/devices/self/webhook",
                "{\"uri\":\"https://127.0.0.1:" + std::to_string(dead_port) + "/\"}") == 200);
  requested(w.device(2), k.port, w.device(3), "hook-2");
  CHECK(eventually([&] { return delivery_state(w.device(3).str()) == "dead:3"; }));
  CHECK(w.sql("SELECT count(*) FROM audit WHERE step = 'webhook-dead' AND detail LIKE $1", {"%" + w.device(3).str() + "%"}) ==
        "1");
  core::http::ClientOptions o;
  o.base_url = "http://127.0.0.1:" + std::to_string(k.instance->ops_port());
  const auto metrics = core::http::Client(o).get("/metrics").body;
  CHECK(metrics.find("keyline_kps_webhook_deliveries_total{result=\"done\"} 1") != std::string::npos);
  CHECK(metrics.find("keyline_kps_webhook_deliveries_total{result=\"dead\"} 1") != std::string::npos);
  CHECK(metrics.find("keyline_kps_long_polls 0") != std::string::npos);
}

namespace {

// keyline-kps serve as a process of its own (the binary of this build), so it can be SIGKILLed.
std::string read_or_empty(const std::string& path) {
  try {
    return test::read_file(path);
  } catch (const std::exception&) {
    return {};
  }
}

struct KpsProcess {
  pid_t pid = -1;
  int port = 0;
  std::string out;
  explicit KpsProcess(const kps::Config& c) {
    port = test::free_port();
    out = world().dir() + "/kps-" + std::to_string(port) + ".out";
    std::vector<std::string> args = {test::binary_dir() + "/bin/keyline-kps", "serve", "--listen",
                                     "127.0.0.1:" + std::to_string(port), "--ops-listen", "127.0.0.1:0", "--tls-cert",
                                     c.tls_cert, "--tls-key", c.tls_key, "--trust", c.trust[0], "--backupdb", c.backupdb,
                                     "--sign-module", c.sign.module, "--sign-token-label", c.sign.token_label,
                                     "--sign-key-label", c.sign.key_label, "--sign-pin-file", c.sign.pin_file, "--log",
                                     c.log, "--threads", "4"};
    for (const auto& a : c.allow) args.insert(args.end(), {"--allow", a});
    pid = ::fork();
    if (pid == 0) {
      ::setenv("KEYLINE_KPS_DB", c.db.c_str(), 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      if (!std::freopen(out.c_str(), "w", stdout) || !std::freopen(out.c_str(), "a", stderr)) _exit(127);
      ::execv(argv[0], argv.data());
      _exit(127);
    }
    const bool up = eventually([&] { return read_or_empty(out).find("serving HTTPS") != std::string::npos; }, 20);
    REQUIRE_MESSAGE(up, read_or_empty(out));
  }
  void kill9() {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    pid = -1;
  }
  ~KpsProcess() {
    if (pid <= 0) return;
    int st = 0;
    ::kill(pid, SIGTERM);
    ::waitpid(pid, &st, 0);
    CHECK_MESSAGE((WIFEXITED(st) && WEXITSTATUS(st) == 0), "keyline-kps did not stop cleanly: " << test::read_file(out));
  }
};

}  // namespace

TEST_CASE("two keyline-kps processes on one database: a replay to the other refused; one SIGKILLed between delivery and ack") {
  auto& w = world();
  test::PublicDb pdb;
  pdb.put(w.device(2).record);
  auto cfg = config({w.device(1).str() + ":" + w.device(2).str() + ":proc-*"});
  cfg.backupdb = pdb.url();
  KpsProcess p1(cfg);
  KpsProcess p2(cfg);
  const std::string body = "{\"source\":\"" + w.device(1).str() + "\",\"label\":\"proc-key\"}";
  const auto first = w.call(w.device(2), p1.port, "POST", "/v1/transfers", body, "application/json");
  REQUIRE_MESSAGE(first.status == 201, first.body);
  w.verify_answer(first);
  CHECK(w.replay(first, p2.port, "POST", "/v1/transfers", body, "application/json").status == 401);
  const std::string id = str(json(first.body), "id");
  REQUIRE(serve(w.device(1), w.device(2), p1.port, id, "proc-key", 0x77).status == 200);
  p1.kill9();  // delivered, not yet acknowledged
  CHECK(receive(w.device(2), w.device(1), p2.port, id, "proc-key") == a_key(0x77));
  CHECK(w.call(w.device(2), p2.port, "GET", "/v1/transfers/" + id + "/key").status == 410);
  CHECK(w.sql("SELECT count(*) FROM audit WHERE transfer_id = $1::uuid AND step IN ('delivered', 'acknowledged')", {id}) ==
        "2");
}

TEST_CASE("the directory: no transport certificate in the record is 422, the public DB down is 503; once read it is kept") {
  auto& w = world();
  auto cfg = config({w.device(0).str() + ":" + w.device(6).str() + ":*", w.device(0).str() + ":" + w.device(7).str() + ":*"});
  {
    test::PublicDb pdb;
    cfg.backupdb = pdb.url();
    Kps k(cfg);
    CHECK(ask(w.device(6), k.port, w.device(0), "dir").status == 422);  // no record at all
    auto two = w.device(6).record;
    two.certificates.resize(2);  // published before the transport certificate was
    pdb.put(two);
    const auto a = ask(w.device(6), k.port, w.device(0), "dir");
    CHECK(a.status == 422);
    w.verify_answer(a);
    pdb.put(w.device(6).record);
    CHECK(ask(w.device(6), k.port, w.device(0), "dir").status == 201);
  }
  test::PublicDb gone;
  cfg.backupdb = "http://127.0.0.1:" + std::to_string(test::free_port());  // nothing listens
  Kps k(cfg);
  CHECK(ask(w.device(6), k.port, w.device(0), "dir-2").status == 201);  // kept from the first read
  CHECK(ask(w.device(7), k.port, w.device(0), "dir").status == 503);   // never read, directory down
}

TEST_CASE("device remove purges the chip's open transfers (envelope deleted, audit row) and its notices and webhook") {
  auto& w = world();
  test::PublicDb pdb;
  pdb.put(w.device(7).record);
  auto cfg = config({w.device(6).str() + ":" + w.device(7).str() + ":rm-*"});
  cfg.backupdb = pdb.url();
  Kps k(cfg);
  const auto open_id = requested(w.device(7), k.port, w.device(6), "rm-1");
  const auto delivered_id = requested(w.device(7), k.port, w.device(6), "rm-2");
  REQUIRE(serve(w.device(6), w.device(7), k.port, delivered_id, "rm-2").status == 200);
  REQUIRE(w.put(w.device(7), k.port, "/v1/devices/self/webhook", "{\"uri\":\"https://127.0.0.1:1/\"}") == 200);
  CHECK(kps::device_remove(cfg, w.device(7).str()) == 2);
  CHECK(state_of(open_id) == "purged");
  CHECK(state_of(delivered_id) == "purged");
  CHECK(w.sql("SELECT count(*) FROM transfers WHERE target_chip = $1 AND ciphertext IS NOT NULL", {w.device(7).str()}) == "0");
  CHECK(w.sql("SELECT count(*) FROM audit WHERE step = 'purged' AND transfer_id IN ($1::uuid, $2::uuid)",
              {open_id, delivered_id}) == "2");
  CHECK(w.sql("SELECT count(*) FROM notifications WHERE chip = $1", {w.device(7).str()}) == "0");
  CHECK(w.sql("SELECT count(*) FROM webhooks WHERE chip = $1", {w.device(7).str()}) == "0");
  CHECK(w.call(w.device(7), k.port, "GET", "/v1/transfers/" + delivered_id + "/key").status == 410);
  CHECK(kps::device_remove(cfg, w.device(7).str()) == 0);  // nothing left
}
