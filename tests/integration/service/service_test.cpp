// keyline-service end to end in process (docs/service.md "Tests"): a real HTTPS listener, the hsm
// fixture's SoftHSM token holding masters of versions 1 and 2, a fresh PostgreSQL database, and the
// device's side of SCP03 (service_card.h) answering the batches as keyline-device's agent would.
#include "keyline/service/service.h"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/mac.h>
#include <botan/pkcs8.h>
#include <botan/x509_ca.h>
#include <botan/x509self.h>
#include <doctest/doctest.h>
#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "keyline/core/cert_profile.h"
#include "keyline/core/http.h"
#include "keyline/core/http_server.h"
#include "keyline/core/http_service.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/pq.h"
#include "keyline/core/scp03_session.h"
#include "keyline/core/service_module.h"
#include "service_card.h"
#include "service_masters.h"
#include "testenv.h"
#include "tls_material.h"

using namespace keyline;
using core::Bytes;
using core::SecureBytes;

namespace {

const std::string kBase = "svc-master-" + std::to_string(::getpid());
const core::ChipId kChipV2 = core::ChipId::parse("A1B2C3D4E5F601020304");
const core::ChipId kChipV1 = core::ChipId::parse("A1B2C3D4E5F601020399");
const core::ChipId kChipUnknown = core::ChipId::parse("00000000000000000001");
const std::string kImeiV2 = "490154203237518";
const std::string kImeiV1 = "356938035643809";

// The manufacturer root and a code-signing certificate under it (EKU exactly codeSigning), software
// keys: the token-side signing is `keyline-service module sign`'s, tested in tests/e2e/service.
struct CodeSigning {
  Botan::AutoSeeded_RNG rng;
  Botan::ECDSA_PrivateKey root_key{rng, Botan::EC_Group("secp256r1")};
  Botan::X509_Certificate root =
      core::make_root_certificate(root_key, "Service Test Root", "keyline test", rng);
  SecureBytes signer_pkcs8;
  Bytes signer_der;
  std::string root_pem_file;

  explicit CodeSigning(const std::string& dir, const std::string& name) {
    Botan::ECDSA_PrivateKey key(rng, Botan::EC_Group("secp256r1"));
    Botan::X509_Cert_Options opts(name + "/keyline test");
    opts.add_ex_constraint("PKIX.CodeSigning");
    opts.add_constraints(Botan::Key_Constraints::DIGITAL_SIGNATURE);
    const auto req = Botan::X509::create_cert_req(opts, key, "SHA-256", rng);
    const Botan::X509_CA ca(root, root_key, "SHA-256", rng);
    const auto now = std::chrono::system_clock::now();
    const auto cert = ca.sign_request(req, rng, Botan::X509_Time(now - std::chrono::hours(1)),
                                      Botan::X509_Time(now + std::chrono::hours(24)));
    signer_der = cert.BER_encode();
    signer_pkcs8 = Botan::PKCS8::BER_encode(key);
    root_pem_file = dir + "/" + name + "-root.pem";
    std::ofstream(root_pem_file) << root.PEM_encode();
  }
  Bytes module(const std::string& name, std::uint32_t version) {
    const Bytes body(300, static_cast<std::uint8_t>(version));  // two LOAD MODULE pieces
    return core::service::encode_module(
        core::service::sign_module(name, version, body, signer_pkcs8, signer_der, rng));
  }
};

std::string write_file(const std::string& path, const Bytes& b) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  return path;
}

const test::ServiceMasters& masters() {
  static const test::ServiceMasters m(kBase);
  return m;
}

struct Fixture {
  test::TlsMaterial tls;
  CodeSigning signing{tls.dir, "good"};
  test::EmptyPublicDb public_db{"svc-test-pdb"};
  std::string db;
  std::string log_file;
  service::Config config;
  std::unique_ptr<service::Server> server;

  explicit Fixture(int ttl_s = 60) {
    const auto env = test::hsm_env();
    db = test::pg_env().create_database("service");
    log_file = tls.dir + "/access.log";
    config.db = db;
    config.public_db = "http://127.0.0.1:" + std::to_string(public_db.server.port());
    config.trust = {signing.root_pem_file};
    config.listen = "127.0.0.1:0";
    config.ops_listen = "127.0.0.1:0";
    config.tls_cert = tls.cert_file;
    config.tls_key = tls.key_file;
    config.token = {env.module, env.label, write_pin(env.user_pin), kBase};
    config.session_ttl_s = ttl_s;
    config.log = log_file;
    masters();  // the masters exist before the service opens the token
    service::migrate(config);
    core::pq::Connection c(db);
    // The devices' records as the public DB path would have cached them (validated there).
    for (const auto& [chip, imei] : {std::pair{kChipV2, kImeiV2}, std::pair{kChipV1, kImeiV1}})
      c.exec("INSERT INTO device (chip_id, imei, record_hash) VALUES ($1, $2, 'seeded')", {chip.str(), imei});
    server = std::make_unique<service::Server>(config);
    server->start();
  }
  std::string write_pin(const std::string& pin) {
    const std::string p = tls.dir + "/pin";
    std::ofstream(p) << pin;
    return p;
  }
  core::http::Client client() {
    core::http::ClientOptions o;
    o.base_url = "https://127.0.0.1:" + std::to_string(server->port());
    o.ca_file = tls.ca_file;
    return core::http::Client(o);
  }
  void enqueue(const std::string& name, const std::string& item_or_module, bool module,
               const std::string& imei) {
    service::CampaignRequest r;
    r.name = name;
    (module ? r.module : r.item) = item_or_module;
    r.trust = {signing.root_pem_file};
    r.imeis_file = write_file(tls.dir + "/" + name + ".imeis", Bytes(imei.begin(), imei.end()));
    std::ostringstream out;
    service::campaign_enqueue(config, r, out);
  }
  std::string job_state(const std::string& campaign) {
    core::pq::Connection c(db);
    return c.exec("SELECT state || ' ' || coalesce(detail, '') FROM job WHERE campaign = $1", {campaign})
        .text(0, 0);
  }
};

Poco::JSON::Object::Ptr parse(const std::string& body) {
  Poco::JSON::Parser p;
  return p.parse(body).extract<Poco::JSON::Object::Ptr>();
}

std::vector<core::CommandApdu> commands_of(const Poco::JSON::Object::Ptr& o) {
  std::vector<core::CommandApdu> out;
  const auto arr = o->getArray("commands");
  for (std::size_t i = 0; i < arr->size(); ++i)
    out.push_back(
        core::decode_command(core::from_hex(arr->getElement<std::string>(static_cast<unsigned>(i)))));
  return out;
}

// The agent's loop (service_api.md): run each command in order, stop after the first SW that is not 9000.
// `tamper_command` / `tamper_answer` change bytes on the way (an attacker on the link).
struct Agent {
  std::function<void(int batch, std::size_t i, core::CommandApdu&)> tamper_command;
  std::function<void(int batch, std::size_t i, Bytes&)> tamper_answer;
  std::vector<std::string> bodies;  // what was posted, for the replay tests
  std::vector<std::vector<core::CommandApdu>> batches;

  std::string answers(int batch, std::vector<core::CommandApdu> cmds, test::ServiceCard& card) {
    batches.push_back(cmds);
    std::string j = "{\"responses\":[";
    for (std::size_t i = 0; i < cmds.size(); ++i) {
      if (tamper_command) tamper_command(batch, i, cmds[i]);
      const auto r = card.transmit(cmds[i]);
      auto bytes = core::encode_response(r);
      Bytes b(bytes.begin(), bytes.end());
      if (tamper_answer) tamper_answer(batch, i, b);
      j += (i ? ",\"" : "\"") + core::to_hex(b) + "\"";
      if (r.sw != core::sw::ok) break;
    }
    return j + "]}";
  }

  // The session's result object (or nullptr with `status` set when the server refused a step).
  Poco::JSON::Object::Ptr run(Fixture& f, test::ServiceCard& card, const core::ChipId& chip,
                              int* status = nullptr) {
    auto client = f.client();
    auto r = client.post("/v1/device/sessions", "{\"chip_id\":\"" + chip.str() + "\"}", "application/json");
    if (status) *status = r.status;
    if (r.status != 201) return nullptr;
    auto o = parse(r.body);
    const std::string id = o->getValue<std::string>("session");
    for (int batch = 1;; ++batch) {
      bodies.push_back(answers(batch, commands_of(o), card));
      r = client.post("/v1/device/sessions/" + id, bodies.back(), "application/json");
      if (status) *status = r.status;
      if (r.status != 200) return nullptr;
      o = parse(r.body);
      if (o->has("done")) return o->getObject("result");
    }
  }
};

test::ServiceCard card_v2(Fixture& f) {
  return test::ServiceCard(kChipV2, 2, masters().comm_v2(kChipV2), f.signing.root);
}

}  // namespace

TEST_CASE("a whole session: an item and a module applied, they survive a reboot, status read back") {
  Fixture f;
  f.enqueue("cfg-1", "0F01=" + write_file(f.tls.dir + "/item", Bytes{'a', 'p', 'n', '=', 'x'}), false,
            kImeiV2);
  f.enqueue("mod-1", write_file(f.tls.dir + "/m3", f.signing.module("radio", 3)), true, kImeiV2);
  auto card = card_v2(f);
  Agent agent;
  const auto result = agent.run(f, card, kChipV2);
  REQUIRE(result);
  CHECK(result->getValue<bool>("ok"));
  CHECK(result->getValue<int>("kvn") == 2);
  CHECK(result->getArray("applied")->size() == 2);
  CHECK(f.job_state("cfg-1") == "applied 9000");
  CHECK(f.job_state("mod-1") == "applied 9000");
  card.reboot();
  CHECK(card.items.at(0x0F01) == Bytes{'a', 'p', 'n', '=', 'x'});
  CHECK(card.modules.at("radio") == 3);
  // The next session has nothing to apply and reads the status back after the reboot.
  Agent again;
  const auto second = again.run(f, card, kChipV2);
  REQUIRE(second);
  CHECK(second->getValue<bool>("ok"));
  CHECK(second->getArray("applied")->size() == 0);
  const auto status = second->getObject("status");
  CHECK(status->getValue<std::string>("imei") == kImeiV2);
  CHECK(status->getValue<int>("kvn") == 2);
  REQUIRE(status->getArray("modules")->size() == 1);
  CHECK(status->getArray("modules")->getObject(0)->getValue<std::string>("name") == "radio");
  CHECK(status->getArray("modules")->getObject(0)->getValue<int>("version") == 3);
  REQUIRE(status->getArray("items")->size() == 1);
  CHECK(status->getArray("items")->getObject(0)->getValue<std::string>("dgi") == "0F01");
  core::pq::Connection c(f.db);
  CHECK(c.exec("SELECT key_version FROM device WHERE chip_id = $1", {kChipV2.str()}).int64(0, 0) == 2);
  CHECK(c.exec("SELECT count(*) FROM session_log WHERE chip_id = $1 AND ok", {kChipV2.str()}).int64(0, 0) ==
        2);
}

TEST_CASE(
    "a step is taken once: the same body again is 409; a recorded script replayed to the device is refused") {
  Fixture f;
  f.enqueue("cfg-r", "0F02=" + write_file(f.tls.dir + "/item", Bytes{1, 2, 3}), false, kImeiV2);
  auto card = card_v2(f);
  Agent agent;
  auto client = f.client();
  auto r = client.post("/v1/device/sessions", "{\"chip_id\":\"" + kChipV2.str() + "\"}", "application/json");
  REQUIRE(r.status == 201);
  const auto o = parse(r.body);
  const std::string id = o->getValue<std::string>("session");
  const std::string body = agent.answers(1, commands_of(o), card);
  r = client.post("/v1/device/sessions/" + id, body, "application/json");
  REQUIRE(r.status == 200);
  const auto second = commands_of(parse(r.body));
  CHECK(client.post("/v1/device/sessions/" + id, body, "application/json").status == 409);
  // The device never ran the second batch; a recorded copy of it, sent to the device in a new session
  // of its own (new card challenge, new session keys), fails EXTERNAL AUTHENTICATE.
  card.transmit(core::scp::initialize_update_command(2, Bytes(16, 0x11)));
  CHECK(card.transmit(second[0]).sw == 0x6982);
  CHECK(card.transmit(second[1]).sw == 0x6982);
  CHECK(card.items.empty());
  CHECK(f.job_state("cfg-r") == "pending ");
  CHECK(client.post("/v1/device/sessions/0123", body, "application/json").status == 404);
}

TEST_CASE(
    "a changed byte in a wrapped command: the device ends the session, nothing applied, the job stays "
    "pending") {
  Fixture f;
  f.enqueue("cfg-t", "0F03=" + write_file(f.tls.dir + "/item", Bytes{9, 9}), false, kImeiV2);
  auto card = card_v2(f);
  Agent agent;
  agent.tamper_command = [](int batch, std::size_t i, core::CommandApdu& c) {
    if (batch == 2 && i == 1) c.data[3] ^= 0x01;  // the first wrapped command (STORE DATA)
  };
  const auto result = agent.run(f, card, kChipV2);
  REQUIRE(result);
  CHECK_FALSE(result->getValue<bool>("ok"));
  CHECK(result->getValue<std::string>("error") == "item refused 6982");
  CHECK(card.items.empty());
  // 6982 carries no R-MAC: the device or the relay wrote it, so the job stays pending and counts it.
  CHECK(f.job_state("cfg-t") == "pending 6982 unauthenticated, refusal 1 of 5");
}

TEST_CASE(
    "a relay answers a bare 6982 for the job's command: the job stays pending, the next session applies it") {
  Fixture f;
  f.enqueue("cfg-f", "0F05=" + write_file(f.tls.dir + "/item", Bytes{5, 5}), false, kImeiV2);
  auto card = card_v2(f);
  Agent agent;
  auto client = f.client();
  auto r = client.post("/v1/device/sessions", "{\"chip_id\":\"" + kChipV2.str() + "\"}", "application/json");
  REQUIRE(r.status == 201);
  auto o = parse(r.body);
  const std::string id = o->getValue<std::string>("session");
  r = client.post("/v1/device/sessions/" + id, agent.answers(1, commands_of(o), card), "application/json");
  REQUIRE(r.status == 200);
  // The device-side agent passes EXTERNAL AUTHENTICATE to the card (its genuine 9000) and answers the
  // job's STORE DATA itself with 6982, a status word no R-MAC covers.
  const auto second = commands_of(parse(r.body));
  const auto auth = core::encode_response(card.transmit(second[0]));
  const std::string forged = "{\"responses\":[\"" + core::to_hex(Bytes(auth.begin(), auth.end())) + "\",\"6982\"]}";
  r = client.post("/v1/device/sessions/" + id, forged, "application/json");
  REQUIRE(r.status == 200);
  REQUIRE(parse(r.body)->has("done"));
  CHECK(card.items.empty());
  CHECK(f.job_state("cfg-f") == "pending 6982 unauthenticated, refusal 1 of 5");
  std::ostringstream status;
  CHECK(service::campaign_status(f.config, "cfg-f", true, status) == 1);
  CHECK(status.str().find("\"state\":\"pending\",\"detail\":\"6982 unauthenticated, refusal 1 of 5\"") !=
        std::string::npos);
  CHECK(status.str().find("\"refusals\":1}") != std::string::npos);
  Agent honest;
  const auto result = honest.run(f, card, kChipV2);
  REQUIRE(result);
  CHECK(result->getValue<bool>("ok"));
  CHECK(f.job_state("cfg-f") == "applied 9000");
  CHECK(card.items.at(0x0F05) == Bytes{5, 5});
}

TEST_CASE(
    "a changed byte in the device's answer: bad R-MAC, the session ends, the job is not marked applied") {
  Fixture f;
  f.enqueue("cfg-m", "0F04=" + write_file(f.tls.dir + "/item", Bytes{7}), false, kImeiV2);
  auto card = card_v2(f);
  Agent agent;
  agent.tamper_answer = [](int batch, std::size_t i, Bytes& b) {
    if (batch == 2 && i == 1) b[0] ^= 0x80;  // the R-MAC of STORE DATA's answer
  };
  const auto result = agent.run(f, card, kChipV2);
  REQUIRE(result);
  CHECK_FALSE(result->getValue<bool>("ok"));
  CHECK(result->getValue<std::string>("error") == "bad R-MAC");
  CHECK(f.job_state("cfg-m") == "pending ");
}

TEST_CASE("a wrong card cryptogram (another chip's key) ends the session after INITIALIZE UPDATE") {
  Fixture f;
  test::ServiceCard impostor(kChipV2, 2, masters().comm_v2(kChipV1), f.signing.root);
  Agent agent;
  const auto result = agent.run(f, impostor, kChipV2);
  REQUIRE(result);
  CHECK_FALSE(result->getValue<bool>("ok"));
  CHECK(result->getValue<std::string>("error") == "bad card cryptogram");
  CHECK(agent.batches.size() == 1);  // nothing was wrapped for it
}

TEST_CASE("a module signed by another key, or not newer than the installed one, is refused by the device") {
  Fixture f;
  auto card = card_v2(f);
  card.modules["radio"] = 5;
  f.enqueue("mod-old", write_file(f.tls.dir + "/m4", f.signing.module("radio", 4)), true, kImeiV2);
  Agent a1;
  auto r1 = a1.run(f, card, kChipV2);
  REQUIRE(r1);
  CHECK(r1->getValue<std::string>("error") == "module refused 6985");
  CHECK(f.job_state("mod-old") == "pending 6985 unauthenticated, refusal 1 of 5");
  // 6985 has no R-MAC, so it is believed only once five sessions have answered it; then the job fails.
  for (int n = 2; n <= 5; ++n) {
    Agent again;
    REQUIRE(again.run(f, card, kChipV2));
  }
  CHECK(f.job_state("mod-old") == "failed refused 5 times (unauthenticated status word), last 6985");
  CHECK(card.modules.at("radio") == 5);
  // Another manufacturer's code-signing key: the campaign refuses it before any device sees it...
  CodeSigning other(f.tls.dir, "other");
  const std::string foreign = write_file(f.tls.dir + "/m9", other.module("radio", 9));
  CHECK_THROWS_AS(f.enqueue("mod-foreign", foreign, true, kImeiV2), core::Error);
  // ...and a device refuses it too when it arrives some other way (queued with the other root trusted).
  service::CampaignRequest r;
  r.name = "mod-foreign";
  r.module = foreign;
  r.trust = {other.root_pem_file};
  r.imeis_file = write_file(f.tls.dir + "/foreign.imeis", Bytes(kImeiV2.begin(), kImeiV2.end()));
  std::ostringstream out;
  service::campaign_enqueue(f.config, r, out);
  Agent a2;
  auto r2 = a2.run(f, card, kChipV2);
  REQUIRE(r2);
  CHECK(r2->getValue<std::string>("error") == "module refused 6982");
  CHECK(card.modules.at("radio") == 5);
}

TEST_CASE("an unknown chip is 404; a malformed chip ID 400; a session past its TTL 410") {
  Fixture f(1);
  auto client = f.client();
  CHECK(client.post("/v1/device/sessions", "{\"chip_id\":\"" + kChipUnknown.str() + "\"}", "application/json")
            .status == 404);
  CHECK(client.post("/v1/device/sessions", "{\"chip_id\":\"xyz\"}", "application/json").status == 400);
  auto r = client.post("/v1/device/sessions", "{\"chip_id\":\"" + kChipV2.str() + "\"}", "application/json");
  REQUIRE(r.status == 201);
  const std::string id = parse(r.body)->getValue<std::string>("session");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  CHECK(client.post("/v1/device/sessions/" + id, "{\"responses\":[]}", "application/json").status == 410);
}

TEST_CASE("devices of derivation versions 1 and 2 are both served; a recorded version is not lowered") {
  Fixture f;
  test::ServiceCard v1(kChipV1, 1, masters().comm_v1(kImeiV1), f.signing.root);
  Agent a1;
  auto r1 = a1.run(f, v1, kChipV1);
  REQUIRE(r1);
  CHECK(r1->getValue<bool>("ok"));
  CHECK(r1->getValue<int>("kvn") == 1);
  auto card = card_v2(f);
  Agent a2;
  auto r2 = a2.run(f, card, kChipV2);
  REQUIRE(r2);
  CHECK(r2->getValue<bool>("ok"));
  // Once version 2 is recorded the service asks for it (P1 = 02): a card answering with version 1
  // keys (a downgrade) is refused by the card's own check.
  test::ServiceCard downgraded(kChipV2, 1, masters().comm_v1(kImeiV2), f.signing.root);
  Agent a3;
  auto r3 = a3.run(f, downgraded, kChipV2);
  REQUIRE(r3);
  CHECK_FALSE(r3->getValue<bool>("ok"));
  CHECK(r3->getValue<std::string>("error") == "initialize update refused");
}

TEST_CASE("the token's master and derived keys are never extractable; logs and the DB hold no key bytes") {
  Fixture f;
  auto t = masters().token();
  auto s = t->session();
  const auto master = t->find_secret_key(kBase + "-v2");
  CHECK(s->bool_attribute(master, CKA_SENSITIVE));
  CHECK_FALSE(s->bool_attribute(master, CKA_DERIVE) == false);
  CHECK_FALSE(s->bool_attribute(master, CKA_SIGN));
  CHECK_FALSE(s->bool_attribute(master, CKA_ENCRYPT));
  CHECK(s->bool_attribute(master, CKA_WRAP_WITH_TRUSTED));
  const auto comm =
      t->derive_aes_ecb(master, core::scp::comm_derivation_data_v2(kChipV2), {32, true, false, false});
  const auto kmac = t->derive_aes_ecb(comm, core::scp::static_key_diversifier(core::scp::StaticKey::Mac),
                                      {16, false, true, false});
  for (const auto h : {comm, kmac}) {
    CHECK(s->bool_attribute(h, CKA_SENSITIVE));
    CHECK_FALSE(s->bool_attribute(h, CKA_EXTRACTABLE));
    CHECK_THROWS_AS(t->secret_value(h), core::Pkcs11Error);
  }
  CHECK(s->bool_attribute(comm, CKA_DERIVE));
  CHECK_FALSE(s->bool_attribute(comm, CKA_SIGN));
  CHECK(s->bool_attribute(kmac, CKA_SIGN));
  CHECK_FALSE(s->bool_attribute(kmac, CKA_DERIVE));
  // The token's CMAC with K-MAC is what the device computes in software from its comm key.
  const Bytes data(32, 0x5A);
  const auto soft = core::scp::static_keys_from_comm(masters().comm_v2(kChipV2));
  const auto tag = t->cmac(kmac, data);
  auto mac = Botan::MessageAuthenticationCode::create_or_throw("CMAC(AES-128)");
  mac->set_key(soft.mac);
  const auto expected = mac->process(data);
  CHECK(tag == Bytes(expected.begin(), expected.end()));
  t->destroy_object(kmac);
  t->destroy_object(comm);
  // A session that applies an item, then a grep of the log and a dump of every table for the keys.
  f.enqueue("cfg-g", "0F05=" + write_file(f.tls.dir + "/item", Bytes{4, 2}), false, kImeiV2);
  auto card = card_v2(f);
  Agent agent;
  const auto result = agent.run(f, card, kChipV2);
  REQUIRE(result);
  CHECK(result->getValue<bool>("ok"));
  f.server->stop();
  std::ifstream in(f.log_file);
  const std::string log((std::istreambuf_iterator<char>(in)), {});
  CHECK(log.find("/v1/device/sessions") != std::string::npos);
  core::pq::Connection c(f.db);
  std::string dump;
  for (const char* table : {"device", "job", "session_log", "campaign"}) {
    const auto r = c.exec(std::string("SELECT t::text FROM ") + table + " t");
    for (int i = 0; i < r.rows(); ++i) dump += r.text(i, 0) + "\n";
  }
  for (const auto& key : {masters().comm_v2(kChipV2), soft.enc, soft.mac, soft.dek}) {
    const std::string hex = core::to_hex(key.data(), key.size());
    std::string lower = hex;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(ch));
    CHECK(log.find(hex) == std::string::npos);
    CHECK(dump.find(hex) == std::string::npos);
    CHECK(dump.find(lower) == std::string::npos);
  }
}

TEST_CASE("PUT KEY rotates a version 1 device to version 2: the old key opens nothing afterwards") {
  Fixture f;
  test::ServiceCard card(kChipV1, 1, masters().comm_v1(kImeiV1), f.signing.root);
  card.imei = kImeiV1;
  service::CampaignRequest r;
  r.name = "rotate-2";
  r.put_key = 2;
  r.imeis_file = write_file(f.tls.dir + "/rotate.imeis", Bytes(kImeiV1.begin(), kImeiV1.end()));
  std::ostringstream out;
  service::campaign_enqueue(f.config, r, out);
  Agent a1;
  const auto r1 = a1.run(f, card, kChipV1);
  REQUIRE(r1);
  CHECK(r1->getValue<bool>("ok"));
  CHECK(r1->getValue<int>("kvn") == 1);
  CHECK(r1->getObject("status")->getValue<int>("kvn") == 2);  // GET STATUS after the PUT KEY
  CHECK(f.job_state("rotate-2") == "applied 9000");
  core::pq::Connection c(f.db);
  CHECK(c.exec("SELECT key_version FROM device WHERE chip_id = $1", {kChipV1.str()}).int64(0, 0) == 2);
  // The card now holds version 2's comm, the one the station would derive for this chip.
  test::ServiceCard expected(kChipV1, 2, masters().comm_v2(kChipV1), f.signing.root);
  Agent a2;
  const auto r2 = a2.run(f, card, kChipV1);
  REQUIRE(r2);
  CHECK(r2->getValue<bool>("ok"));
  CHECK(r2->getValue<int>("kvn") == 2);
  // A copy of the device made before the rotation (the old key, KVN 1) no longer opens a session.
  test::ServiceCard old(kChipV1, 1, masters().comm_v1(kImeiV1), f.signing.root);
  Agent a3;
  const auto r3 = a3.run(f, old, kChipV1);
  REQUIRE(r3);
  CHECK_FALSE(r3->getValue<bool>("ok"));
  // And the rotated card answers exactly what a card made with version 2's comm answers.
  Agent a4;
  const auto r4 = a4.run(f, expected, kChipV1);
  REQUIRE(r4);
  CHECK(r4->getValue<bool>("ok"));
}

TEST_CASE(
    "campaigns: a rerun queues nothing new, another payload under the same name is refused, status counts") {
  Fixture f;
  const std::string item = "0F06=" + write_file(f.tls.dir + "/item6", Bytes{6});
  const std::string both = kImeiV2 + "\n" + kImeiV1 + "\n";
  const std::string imeis = write_file(f.tls.dir + "/two.imeis", Bytes(both.begin(), both.end()));
  service::CampaignRequest r;
  r.name = "cfg-6";
  r.item = item;
  r.imeis_file = imeis;
  std::ostringstream out;
  service::campaign_enqueue(f.config, r, out);
  CHECK(out.str() == "campaign cfg-6: 2 job(s) queued, 0 already queued\n");
  std::ostringstream again;
  service::campaign_enqueue(f.config, r, again);
  CHECK(again.str() == "campaign cfg-6: 0 job(s) queued, 2 already queued\n");
  r.item = "0F06=" + write_file(f.tls.dir + "/item6b", Bytes{7});
  try {
    service::campaign_enqueue(f.config, r, out);
    FAIL("another payload under the same name was queued");
  } catch (const core::Error& e) {
    CHECK(e.numeric() == 8021);
  }
  r.name = "cfg-bad";
  r.item = "8101=" + write_file(f.tls.dir + "/secret", Bytes{1});  // not a configuration DGI
  CHECK_THROWS_AS(service::campaign_enqueue(f.config, r, out), core::Error);
  r.item = item;
  r.imeis_file = write_file(f.tls.dir + "/bad.imeis", Bytes{'1', '2', '3'});
  CHECK_THROWS_AS(service::campaign_enqueue(f.config, r, out), core::Error);
  std::ostringstream status;
  CHECK(service::campaign_status(f.config, "cfg-6", true, status) == 1);  // both pending
  auto card = card_v2(f);
  Agent agent;
  REQUIRE(agent.run(f, card, kChipV2));
  std::ostringstream after;
  CHECK(service::campaign_status(f.config, "cfg-6", false, after) == 1);  // the v1 device is still pending
  CHECK(after.str().rfind("campaign cfg-6: 1 applied, 0 failed, 1 pending\n", 0) == 0);
}

TEST_CASE("a device whose version the token holds no master of: the session ends not ok, no 500") {
  Fixture f;
  f.server->stop();
  f.config.token.master_label = "svc-no-such-master";
  f.server = std::make_unique<service::Server>(f.config);
  f.server->start();
  for (int version : {1, 2}) {
    test::ServiceCard card(version == 2 ? kChipV2 : kChipV1, static_cast<std::uint8_t>(version),
                           version == 2 ? masters().comm_v2(kChipV2) : masters().comm_v1(kImeiV1), f.signing.root);
    Agent agent;
    int status = 0;
    const auto result = agent.run(f, card, version == 2 ? kChipV2 : kChipV1, &status);
    REQUIRE(result);
    CHECK_FALSE(result->getValue<bool>("ok"));
    CHECK(result->getValue<std::string>("error") == "no key of version " + std::to_string(version));
  }
}
