// The device and keyline-service together (docs/service.md): keyline-service's Server in process over
// real HTTPS with the hsm fixture's SoftHSM token (masters of versions 1 and 2) and a fresh PostgreSQL
// database; a real device directory personalized with the comm key the station would derive; the
// device's own agent (device::run_service_session) talking to it. An item and a module applied and
// there after a reboot, devices of derivation versions 1 and 2 served, an unknown chip refused.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <doctest/doctest.h>

#include <cstdio>
#include <set>
#include <sstream>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/http.h"
#include "keyline/core/http_server.h"
#include "keyline/core/http_service.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/pq.h"
#include "keyline/core/scp03_session.h"
#include "keyline/core/service_module.h"
#include "keyline/device/applet.h"
#include "keyline/device/service_agent.h"
#include "keyline/device/service_store.h"
#include "keyline/service/service.h"
#include "service_masters.h"
#include "service_pki.h"
#include "testenv.h"
#include "tls_material.h"

using namespace keyline;
using core::Bytes;
using core::SecureBytes;
namespace fs = std::filesystem;

namespace {

const std::string kBase = "devsvc-master-" + std::to_string(::getpid());

const test::ServiceMasters& masters() {
  static const test::ServiceMasters m(kBase);
  return m;
}

std::string write_file(const std::string& path, const Bytes& b) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  return path;
}

struct Fixture {
  test::TlsMaterial tls;
  test::Scratch tmp;
  test::Manufacturer maker;
  std::string root_pem = (tmp.path() / "root.pem").string();
  test::EmptyPublicDb public_db{"devsvc-pdb"};
  std::string db;
  service::Config config;
  std::unique_ptr<service::Server> server;

  Fixture() {
    maker.write_root(root_pem);
    const auto env = test::hsm_env();
    db = test::pg_env().create_database("devsvc");
    config.db = db;
    config.public_db = "http://127.0.0.1:" + std::to_string(public_db.server.port());
    config.trust = {root_pem};
    config.listen = "127.0.0.1:0";
    config.ops_listen = "127.0.0.1:0";
    config.tls_cert = tls.cert_file;
    config.tls_key = tls.key_file;
    const std::string pin = tls.dir + "/pin";
    std::ofstream(pin) << env.user_pin;
    config.token = {env.module, env.label, pin, kBase};
    config.log = tls.dir + "/access.log";
    masters();  // the masters exist before the service opens the token
    service::migrate(config);
    server = std::make_unique<service::Server>(config);
    server->start();
  }

  // A device made and personalized as the line would: ROM root, package with this comm key and version.
  fs::path device(const std::string& name, const std::string& imei, int version) {
    std::set<std::string> taken;
    const fs::path dir = tmp.path() / name;
    const auto chip = device::make_device(dir, root_pem, taken);
    auto pkg = maker.package_for(chip, imei);
    pkg.comm_key = version == 1 ? masters().comm_v1(imei) : masters().comm_v2(chip);
    pkg.master_version = static_cast<std::uint8_t>(version);
    device::Device dev(device::Chip::load(dir), {});
    device::Session s(dev);
    const auto run = [&](const core::CommandApdu& c) {
      return core::transceive([&](const SecureBytes& a) { return s.process(a.data(), a.size()); }, c);
    };
    REQUIRE(run(core::applet::select_command()).sw == core::sw::ok);
    const SecureBytes enc = pkg.encode();
    for (std::size_t off = 0, n = 0; off < enc.size(); off += 200, ++n) {
      const std::size_t len = std::min<std::size_t>(200, enc.size() - off);
      core::CommandApdu c;
      c.cla = 0x80;
      c.ins = 0xE2;
      c.p1 = off + len == enc.size() ? 0x88 : 0x08;
      c.p2 = static_cast<std::uint8_t>(n);
      c.data.assign(enc.begin() + off, enc.begin() + off + len);
      c.le = 256;
      REQUIRE(run(c).sw == core::sw::ok);
    }
    // The record as the public DB path would have cached it (the service validates it there).
    core::pq::Connection c(db);
    c.exec("INSERT INTO device (chip_id, imei, record_hash) VALUES ($1, $2, 'seeded')", {chip.str(), imei});
    return dir;
  }

  void enqueue(const std::string& name, const std::string& item, const std::string& module,
               const std::string& imei) {
    service::CampaignRequest r;
    r.name = name;
    r.item = item;
    r.module = module;
    r.trust = {root_pem};
    r.imeis_file = write_file(tls.dir + "/" + name + ".imeis", Bytes(imei.begin(), imei.end()));
    std::ostringstream out;
    service::campaign_enqueue(config, r, out);
  }

  Poco::JSON::Object::Ptr agent(const fs::path& dir) {
    device::ServiceAgentConfig a;
    a.dir = dir.string();
    a.url = "https://127.0.0.1:" + std::to_string(server->port());
    a.ca = tls.ca_file;
    Poco::JSON::Parser p;
    return p.parse(device::run_service_session(a)).extract<Poco::JSON::Object::Ptr>();
  }
};

}  // namespace

TEST_CASE("keyline-service and the device's agent: an item and a module applied, there after a reboot (v2)") {
  Fixture f;
  const std::string imei = "490154203237518";
  const auto dir = f.device("v2", imei, 2);
  const auto signer = f.maker.code_signer();
  const Bytes body(900, 0x5C);
  const auto module = core::service::encode_module(
      core::service::sign_module("radio", 3, body, signer.pkcs8, signer.cert_der, f.maker.rng()));
  f.enqueue("cfg", "0F01=" + write_file(f.tls.dir + "/item", Bytes{'a', 'p', 'n', '=', 'x'}), "", imei);
  f.enqueue("mod", "", write_file(f.tls.dir + "/radio.mod", module), imei);

  const auto result = f.agent(dir);
  CHECK(result->getValue<bool>("ok"));
  CHECK(result->getValue<int>("kvn") == 2);
  CHECK(result->getArray("applied")->size() == 2);

  // Reboot: a fresh load of the directory, the boot checks, the module verified again.
  const auto chip = device::Chip::load(dir);
  CHECK(device::boot_offline(dir).imei.str() == imei);
  const auto mods = device::installed_modules(chip);
  REQUIRE(mods.modules.size() == 1);
  CHECK(mods.modules[0].name == "radio");
  CHECK(mods.modules[0].version == 3);
  CHECK(device::load_items(dir).at(0x0F01) == Bytes{'a', 'p', 'n', '=', 'x'});

  // The next session has nothing to apply and reads the status back.
  const auto again = f.agent(dir);
  CHECK(again->getValue<bool>("ok"));
  CHECK(again->getArray("applied")->size() == 0);

  // The same through the program an operator runs: keyline-device service-agent, exit 0, the result printed.
  const std::string cmd = test::binary_dir() + "/bin/keyline-device service-agent --dir " + dir.string() +
                          " --service https://127.0.0.1:" + std::to_string(f.server->port()) + " --ca " +
                          f.tls.ca_file;
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p);
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  CHECK(::pclose(p) == 0);
  CHECK(out.find("\"ok\":true") != std::string::npos);
}

TEST_CASE(
    "keyline-service and the device's agent: a derivation v1 device is served beside v2, an unknown chip is "
    "404") {
  Fixture f;
  const auto v1 = f.device("v1", "356938035643809", 1);
  const auto r1 = f.agent(v1);
  CHECK(r1->getValue<bool>("ok"));
  CHECK(r1->getValue<int>("kvn") == 1);
  const auto v2 = f.device("v2", "490154203237518", 2);
  CHECK(f.agent(v2)->getValue<int>("kvn") == 2);

  std::set<std::string> taken;
  const auto stranger = f.tmp.path() / "stranger";
  device::make_device(stranger, f.root_pem, taken);
  try {
    f.agent(stranger);
    FAIL("an unknown chip was served");
  } catch (const core::Error& e) {
    CHECK(e.code() == core::ErrorCode::Http);
    CHECK(std::string(e.what()).find("HTTP 404") != std::string::npos);
  }
}
