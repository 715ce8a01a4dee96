// scripts/bench.sh part "service" (scripts/bench_service.sh): completed device sessions per second with
// 32 agents, each session pushing one configuration item (STORE DATA under SCP03, then GET STATUS),
// keys derived on the SoftHSM token (version 2), against a reference measured in the same run: the
// same 32 clients doing three HTTPS round trips to /healthz (a session's three requests, no work).
// Prints p50/p99 of a session. Needs KEYLINE_TESTENV with pg/ and hsm/ (scripts/pg.sh, scripts/hsm.sh).
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "keyline/core/cert_profile.h"
#include "keyline/core/http.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/pq.h"
#include "keyline/core/scp03_session.h"
#include "keyline/service/service.h"
#include "service_card.h"
#include "testenv.h"
#include "tls_material.h"

using namespace keyline;
using core::Bytes;
using core::SecureBytes;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kAgents = 32;
constexpr int kJobsPerDevice = 2000;

Poco::JSON::Object::Ptr parse(const std::string& body) {
  Poco::JSON::Parser p;
  return p.parse(body).extract<Poco::JSON::Object::Ptr>();
}

std::string answer(const Poco::JSON::Object::Ptr& o, test::ServiceCard& card) {
  const auto arr = o->getArray("commands");
  std::string j = "{\"responses\":[";
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const auto r = card.transmit(
        core::decode_command(core::from_hex(arr->getElement<std::string>(static_cast<unsigned>(i)))));
    const auto b = core::encode_response(r);
    j += (i ? ",\"" : "\"") + core::to_hex(b.data(), b.size()) + "\"";
    if (r.sw != core::sw::ok) break;
  }
  return j + "]}";
}

bool session(core::http::Client& client, const core::ChipId& chip, test::ServiceCard& card) {
  auto r = client.post("/v1/device/sessions", "{\"chip_id\":\"" + chip.str() + "\"}", "application/json");
  if (r.status != 201) return false;
  auto o = parse(r.body);
  const std::string path = "/v1/device/sessions/" + o->getValue<std::string>("session");
  for (;;) {
    r = client.post(path, answer(o, card), "application/json");
    if (r.status != 200) return false;
    o = parse(r.body);
    if (o->has("done")) return o->getObject("result")->getValue<bool>("ok");
  }
}

struct Run {
  double per_second = 0, p50_ms = 0, p99_ms = 0;
  long failed = 0;
};

Run measure(int seconds, const std::function<bool(int agent)>& one) {
  std::vector<std::vector<double>> lat(kAgents);
  std::atomic<long> failed{0};
  const auto end = Clock::now() + std::chrono::seconds(seconds);
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int a = 0; a < kAgents; ++a)
    threads.emplace_back([&, a] {
      while (Clock::now() < end) {
        const auto s = Clock::now();
        if (!one(a)) ++failed;
        lat[a].push_back(std::chrono::duration<double, std::milli>(Clock::now() - s).count());
      }
    });
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  Run r;
  r.per_second = static_cast<double>(all.size() - static_cast<std::size_t>(failed.load())) / wall;
  r.p50_ms = all.empty() ? 0 : all[all.size() / 2];
  r.p99_ms = all.empty() ? 0 : all[std::min(all.size() - 1, all.size() * 99 / 100)];
  r.failed = failed.load();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const int seconds = argc > 1 ? std::atoi(argv[1]) : 10;
  const auto hsm = test::hsm_env();
  const std::string base = "bench-master-" + std::to_string(::getpid());
  auto token = core::Pkcs11Token::open(hsm.module, hsm.label,
                                       SecureBytes(hsm.user_pin.begin(), hsm.user_pin.end()), 4);
  token->generate_mirrorable_aes_derive_key(base + "-v2", {0, 0, 0, 2});
  test::TlsMaterial tls;
  Botan::AutoSeeded_RNG rng;
  Botan::ECDSA_PrivateKey root_key(rng, Botan::EC_Group("secp256r1"));
  const auto root = core::make_root_certificate(root_key, "Bench Root", "keyline bench", rng);
  std::ofstream(tls.dir + "/root.pem") << root.PEM_encode();
  std::ofstream(tls.dir + "/pin") << hsm.user_pin;

  service::Config config;
  config.db = test::pg_env().create_database("service_bench");
  config.public_db = "http://127.0.0.1:9";  // every device is in the service DB already
  config.trust = {tls.dir + "/root.pem"};
  config.listen = config.ops_listen = "127.0.0.1:0";
  config.tls_cert = tls.cert_file;
  config.tls_key = tls.key_file;
  config.token = {hsm.module, hsm.label, tls.dir + "/pin", base};
  config.token_sessions = 16;
  config.db_pool = 16;
  config.jobs_per_session = 1;
  config.log = "off";
  service::migrate(config);

  std::vector<core::ChipId> chips;
  std::vector<std::unique_ptr<test::ServiceCard>> cards;
  {
    core::pq::Connection c(config.db);
    c.exec(
        "INSERT INTO campaign (name, kind, payload_sha256) SELECT 'bench-' || k, 'item', 'x'"
        " FROM generate_series(1, $1::int) k",
        {kJobsPerDevice});
    for (int a = 0; a < kAgents; ++a) {
      char hex[21];
      std::snprintf(hex, sizeof hex, "B0B0B0B0B0B0B0B000%02X", a);
      const auto chip = core::ChipId::parse(hex);
      const auto imei = core::Imei::from_tac_serial("35693803", static_cast<std::uint32_t>(a)).str();
      c.exec("INSERT INTO device (chip_id, imei, record_hash) VALUES ($1, $2, 'bench')", {chip.str(), imei});
      c.exec(
          "INSERT INTO job (campaign, imei, kind, dgi, payload) SELECT 'bench-' || k, $1, 'item', 3841,"
          " '\\x0102030405060708'::bytea FROM generate_series(1, $2::int) k",
          {imei, kJobsPerDevice});
      const auto h =
          token->derive_aes_ecb(token->find_secret_key(base + "-v2"),
                                core::scp::comm_derivation_data_v2(chip), {32, false, false, true});
      cards.push_back(std::make_unique<test::ServiceCard>(chip, 2, token->secret_value(h), root));
      token->destroy_object(h);
      chips.push_back(chip);
    }
  }
  service::Server server(config);
  server.start();
  std::vector<std::unique_ptr<core::http::Client>> clients;
  for (int a = 0; a < kAgents; ++a) {
    core::http::ClientOptions o;
    o.base_url = "https://127.0.0.1:" + std::to_string(server.port());
    o.ca_file = tls.ca_file;
    clients.push_back(std::make_unique<core::http::Client>(o));
  }
  // Reference: a session's three HTTPS round trips with nothing behind them.
  const Run ref = measure(seconds, [&](int a) {
    for (int i = 0; i < 3; ++i)
      if (clients[a]->get("/healthz").status != 200) return false;
    return true;
  });
  const Run run = measure(seconds, [&](int a) { return session(*clients[a], chips[a], *cards[a]); });
  core::pq::Connection c(config.db);
  const long applied = c.exec("SELECT count(*) FROM job WHERE state = 'applied'").int64(0, 0);
  server.stop();
  std::printf(
      "service: %.0f sessions/s (32 agents, one item each; p50 %.1f ms, p99 %.1f ms; %ld failed; %ld items "
      "applied)\n",
      run.per_second, run.p50_ms, run.p99_ms, run.failed, applied);
  std::printf("service: reference %.0f triples of HTTPS round trips/s (p50 %.1f ms, p99 %.1f ms)\n",
              ref.per_second, ref.p50_ms, ref.p99_ms);
  std::printf("service: ratio %.2f of the transport's ceiling; goal 500 sessions/s: %s\n",
              run.per_second / ref.per_second, run.per_second >= 500 ? "met" : "NOT met");
  token->destroy_object(token->find_secret_key(base + "-v2"));
  return run.failed == 0 ? 0 : 1;
}
