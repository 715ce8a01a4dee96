// The log tests' shared fixture (integration_backupdb_log, integration_backupdb_witness): the fixture
// cluster's databases, the public DB server program with its log key on a SoftHSM token of its own,
// stations' certificates and records, and the checks a recovery runs on a proof.
#pragma once

#include <doctest/doctest.h>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <sstream>
#include <thread>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include "keyline/backupdb/migrate.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/checkpoint.h"
#include "keyline/core/http.h"
#include "keyline/core/merkle.h"
#include "keyline/core/migrate.h"
#include "keyline/core/pq.h"
#include "keyline/core/record.h"
#include "keyline/core/record_leaf.h"
#include "keyline/core/tlog_tiles.h"
#include "backupdb_fixture.h"
#include "testenv.h"

using namespace keyline;
using namespace keyline::core;

namespace {

constexpr const char* kOrigin = "keyline-test-log";

// The device PKI, TLS for the server and one station, and the log token's PIN file.
struct Pki : DevicePkiBase {
  std::mutex rng_mutex;

  Pki() : DevicePkiBase("/tmp/kl-tlog-test.XXXXXX") {
    write_file(dir + "/root.pem", to_pem(*root));
    auto svc_key = new_key(rng);
    auto svc = make_ca_certificate(*root, *root_key, *svc_key, "Test Service CA", "keyline test", 0, rng);
    write_file(dir + "/service_ca.pem", to_pem(svc));
    auto srv_key = new_key(rng);
    write_file(dir + "/server.pem", to_pem(issue_tls_certificate(svc, *svc_key, *srv_key, "backupdb", {"127.0.0.1"},
                                                                 TlsRole::Server, rng)));
    write_file(dir + "/server.key", Botan::PKCS8::PEM_encode(*srv_key));
    auto st_key = new_key(rng);
    write_file(dir + "/station.pem", to_pem(issue_station_certificate(svc, *svc_key, *st_key, "station-1", rng)));
    write_file(dir + "/station.key", Botan::PKCS8::PEM_encode(*st_key));
    auto st2_key = new_key(rng);
    write_file(dir + "/station2.pem", to_pem(issue_station_certificate(svc, *svc_key, *st2_key, "station-2", rng)));
    write_file(dir + "/station2.key", Botan::PKCS8::PEM_encode(*st2_key));
    write_file(dir + "/role.pass", std::string(kRolePassword) + "\n");
    // A token of its own (not the hsm fixture's): the OpenSSL PKCS#11 engine other tests use for TLS
    // keys cannot list a token's keys once it holds an Ed25519 key. The servers and the CLI inherit
    // SOFTHSM2_CONF.
    int rc = -1;
    const auto out = sh(test::source_dir() + "/scripts/hsm.sh init " + dir + "/hsm keyline-log-test 2>&1", &rc);
    REQUIRE_MESSAGE(rc == 0, out);
    setenv("SOFTHSM2_CONF", (dir + "/hsm/softhsm2.conf").c_str(), 1);
    module = test::read_file(dir + "/hsm/module");
  }
  std::string module;

  // Record n, the same bytes every time it is asked for (its hash is what the log holds).
  Record record(std::uint32_t n) {
    std::lock_guard<std::mutex> g(rng_mutex);
    if (const auto it = made.find(n); it != made.end()) return it->second;
    char chip[32];
    std::snprintf(chip, sizeof chip, "4790518%013u", n);
    Record r;
    r.chip_id = ChipId::parse(chip);
    r.imei = Imei::from_tac_serial("35780502", n);
    const std::string pt = "data package " + std::to_string(n);
    r.backup = seal_backup(SecureBytes(32, 0x42), r.chip_id, SecureBytes(pt.begin(), pt.end()));
    auto dev_key = new_key(rng);
    auto cert = issue_identity_certificate(*device_ca, *device_ca_key, *dev_key, r.imei, r.chip_id, kDefaultHwType, rng);
    r.certificates = {cert.BER_encode(), device_ca->BER_encode()};
    made.emplace(n, r);
    return r;
  }
  std::map<std::uint32_t, Record> made;
};

Pki& pki() {
  static Pki p;
  return p;
}

std::string bin() { return test::binary_dir() + "/bin/keyline-backupdb"; }

// A fresh log key on the test's token for each test (labels are unique per process and call).
std::string new_key_label() {
  static std::atomic<int> n{0};
  return "tlog-test-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

std::vector<std::string> log_args(const std::string& key_label) {
  return {"--log-token-module", pki().module, "--log-token-label", "keyline-log-test", "--log-token-pin-file",
          pki().dir + "/hsm/user.pin", "--log-key-label", key_label, "--log-origin", kOrigin};
}

std::string joined(const std::vector<std::string>& args) {
  std::string out;
  for (const auto& a : args) out += " '" + a + "'";
  return out;
}

// `keyline-backupdb log init|key` on the fixture token: its stdout, trimmed.
std::string log_cli(const std::string& sub, const std::string& key_label, int* rc) {
  auto out = sh(bin() + " log " + sub + joined(log_args(key_label)) + " 2>&1", rc);
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

struct Database {
  std::string owner;
  std::string role_nopw;  // what serve gets (its password from --db-password-file)
  Database() : Database(test::pg_env().create_database("tlog"), true) {}
  // A database the caller made (and migrated, unless `migrate`).
  Database(std::string owner_conninfo, bool migrate) : owner(std::move(owner_conninfo)) {
    const auto env = test::pg_env();
    if (migrate) {
      backupdb::Config cfg;
      cfg.db = owner;
      cfg.role_password.assign(kRolePassword, kRolePassword + std::strlen(kRolePassword));
      REQUIRE(backupdb::migrate(cfg) == static_cast<int>(backupdb::embedded_migrations().size()));
    }
    role_nopw = "host=" + env.host + " port=" + std::to_string(env.port) + " user=keyline_backupdb dbname=" +
                dbname_of(owner) + " connect_timeout=5";
  }
};

// A running `keyline-backupdb serve` on a database, HTTPS with the station CA.
struct Server {
  std::string url, log;
  int ops_port = 0;
  pid_t pid = -1;

  Server(const Database& db, const std::vector<std::string>& extra) {
    const int port = test::free_port();
    ops_port = test::free_port();
    const auto& d = pki().dir;
    log = d + "/server" + std::to_string(port) + ".log";
    std::vector<std::string> args = {bin(), "serve", "--db", db.role_nopw, "--db-password-file", d + "/role.pass",
                                     "--listen", "127.0.0.1:" + std::to_string(port), "--trust", d + "/root.pem",
                                     "--ops-listen", "127.0.0.1:" + std::to_string(ops_port), "--log", log,
                                     "--tls-cert", d + "/server.pem", "--tls-key", d + "/server.key",
                                     "--station-ca", d + "/service_ca.pem"};
    args.insert(args.end(), extra.begin(), extra.end());
    url = "https://127.0.0.1:" + std::to_string(port);
    pid = spawn(args, log + ".out");
    for (int i = 0; i < 100; ++i) {
      try {
        if (client()->get("/healthz").status == 200) return;
      } catch (const Error&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    FAIL("server did not come up: " << slurp(log + ".out"));
  }
  ~Server() { stop(); }
  void stop() {
    if (pid <= 0) return;
    int st = 0;
    kill(pid, SIGTERM);
    waitpid(pid, &st, 0);
    CHECK_MESSAGE((WIFEXITED(st) && WEXITSTATUS(st) == 0), "server did not stop cleanly: " << slurp(log + ".out"));
    pid = -1;
  }
  // station: "" for none, "station" or "station2" (two stations, two certificates).
  std::unique_ptr<http::Client> client(const std::string& station = "") const {
    http::ClientOptions o;
    o.base_url = url;
    o.ca_file = pki().dir + "/service_ca.pem";
    if (!station.empty()) {
      o.cert_file = pki().dir + "/" + station + ".pem";
      o.key_file = pki().dir + "/" + station + ".key";
    }
    o.connect_attempts = 1;
    o.max_body = 4 * 1024 * 1024;
    return std::make_unique<http::Client>(o);
  }
  http::Response get(const std::string& path, const std::map<std::string, std::string>& h = {}) const {
    return client()->get(path, h);
  }
  std::string metrics() const {
    http::ClientOptions o;
    o.base_url = "http://127.0.0.1:" + std::to_string(ops_port);
    return http::Client(o).get("/metrics").body;
  }
};

Poco::JSON::Object::Ptr json(const std::string& body) {
  return Poco::JSON::Parser().parse(body).extract<Poco::JSON::Object::Ptr>();
}

std::vector<Bytes> hashes(const Poco::JSON::Object::Ptr& o, const char* key) {
  std::vector<Bytes> out;
  const auto arr = o->getArray(key);
  for (unsigned i = 0; i < arr->size(); ++i) out.push_back(from_base64(arr->getElement<std::string>(i)));
  return out;
}

// The checkpoint the server publishes, once its size is at least `size` (the integrator runs every 250 ms).
tlog::OpenedCheckpoint checkpoint_of(const Server& s, const note::Ed25519Verifier& key, std::uint64_t size) {
  for (int i = 0; i < 100; ++i) {
    const auto r = s.get("/v1/log/checkpoint");
    if (r.status == 200) {
      auto cp = tlog::open_checkpoint(r.body, key, kOrigin);
      if (cp.checkpoint.size >= size) return cp;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  FAIL("no checkpoint of size " << size);
  throw std::logic_error("unreachable");
}

// Publishes records first..first+count-1 from `threads` stations at once; returns each one's leaf index.
std::map<std::uint32_t, std::int64_t> publish_all(const Server& s, std::uint32_t first, std::uint32_t count, int threads) {
  std::vector<Record> recs;
  for (std::uint32_t i = 0; i < count; ++i) recs.push_back(pki().record(first + i));
  std::mutex m;
  std::map<std::uint32_t, std::int64_t> out;
  std::atomic<std::uint32_t> next{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      auto c = s.client(t % 2 == 0 ? "station" : "station2");
      for (std::uint32_t i = next++; i < count; i = next++) {
        const auto r = c->post("/v1/records", recs[i].to_json(), "application/json");
        if (r.status != 201) {
          ++failures;
          continue;
        }
        const auto idx = json(r.body)->getValue<std::int64_t>("leaf_index");
        std::lock_guard<std::mutex> g(m);
        out[first + i] = idx;
      }
    });
  }
  for (auto& t : ts) t.join();
  REQUIRE(failures == 0);
  return out;
}

tlog::TileReader http_tiles(const Server& s) {
  return [&s](const tlog::TileId& id) {
    const auto r = s.get("/v1/log/" + tlog::tile_path(id));
    if (r.status != 200) throw FormatError(ErrorCode::BadTile, tlog::tile_path(id) + ": HTTP " + std::to_string(r.status));
    return Bytes(r.body.begin(), r.body.end());
  };
}

note::Ed25519Verifier init_key(const std::string& label) {
  int rc = -1;
  const auto vkey = log_cli("init", label, &rc);
  REQUIRE_MESSAGE(rc == 0, vkey);
  return note::Ed25519Verifier::parse(vkey);
}

// The inclusion proof of record n against the checkpoint it names, checked as recovery checks it:
// the leaf is computed from the record, not taken from the server.
void check_proof(const Server& s, const Record& rec, std::int64_t index, const tlog::OpenedCheckpoint& cp,
                 const note::Ed25519Verifier& key) {
  const auto r = s.get("/v1/records/" + rec.chip_id.str() + "/proof?tree_size=" + std::to_string(cp.checkpoint.size));
  REQUIRE_MESSAGE(r.status == 200, r.body);
  const auto o = json(r.body);
  CHECK(o->getValue<std::int64_t>("leaf_index") == index);
  CHECK(o->getValue<std::uint64_t>("tree_size") == cp.checkpoint.size);
  const auto leaf = merkle::leaf_hash(encode_record_leaf(rec.chip_id, rec.imei, rec.hash()));
  CHECK(from_base64(o->getValue<std::string>("leaf_hash")) == merkle::to_bytes(leaf));
  const auto served = tlog::open_checkpoint(o->getValue<std::string>("checkpoint"), key, kOrigin);
  CHECK(served.checkpoint == cp.checkpoint);
  CHECK_NOTHROW(merkle::verify_inclusion(static_cast<std::uint64_t>(index), cp.checkpoint.size, merkle::to_bytes(leaf),
                                         hashes(o, "proof"), merkle::to_bytes(cp.checkpoint.root)));
}

}  // namespace
