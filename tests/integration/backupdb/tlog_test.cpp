// The public DB's transparency log end to end (docs/transparency.md, "The public DB's log"): the real
// server program on the fixture PostgreSQL cluster with its log key on a SoftHSM token of its own,
// real TLS, and the verifiers a recovery or a monitor runs (core merkle, checkpoint, tlog_tiles).
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
#include "testenv.h"

using namespace keyline;
using namespace keyline::core;

namespace {

constexpr const char* kRolePassword = "kl-test-role-pw";
constexpr const char* kOrigin = "keyline-test-log";

void write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string sh(const std::string& cmd, int* rc = nullptr) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  if (rc) *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

std::unique_ptr<Botan::ECDSA_PrivateKey> new_key(Botan::RandomNumberGenerator& rng) {
  return std::make_unique<Botan::ECDSA_PrivateKey>(rng, Botan::EC_Group("secp256r1"));
}

// The device PKI, TLS for the server and one station, and the log token's PIN file.
struct Pki {
  std::string dir;
  Botan::AutoSeeded_RNG rng;
  std::mutex rng_mutex;
  std::unique_ptr<Botan::ECDSA_PrivateKey> root_key, device_ca_key;
  std::unique_ptr<Botan::X509_Certificate> root, device_ca;

  Pki() {
    char tmpl[] = "/tmp/kl-tlog-test.XXXXXX";
    dir = mkdtemp(tmpl);
    root_key = new_key(rng);
    root = std::make_unique<Botan::X509_Certificate>(make_root_certificate(*root_key, "Test Root", "keyline test", rng));
    device_ca_key = new_key(rng);
    device_ca = std::make_unique<Botan::X509_Certificate>(
        make_ca_certificate(*root, *root_key, *device_ca_key, "Test Device CA", "keyline test", 0, rng));
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
  ~Pki() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

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

std::string dbname_of(const std::string& conninfo) {
  const auto p = conninfo.find("dbname=");
  const auto e = conninfo.find(' ', p);
  return conninfo.substr(p + 7, e == std::string::npos ? std::string::npos : e - p - 7);
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
    pid = fork();
    if (pid == 0) {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      const std::string out = log + ".out";
      if (!freopen(out.c_str(), "w", stdout) || !freopen(out.c_str(), "a", stderr)) _exit(127);
      execv(argv[0], argv.data());
      _exit(127);
    }
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

std::vector<std::uint64_t> checkpoint_sizes(const Database& db) {
  pq::Connection c(db.owner);
  const auto r = c.exec("SELECT tree_size FROM log_checkpoints ORDER BY tree_size");
  std::vector<std::uint64_t> out;
  for (int i = 0; i < r.rows(); ++i) out.push_back(static_cast<std::uint64_t>(r.int64(i, 0)));
  return out;
}

}  // namespace

TEST_CASE("log init makes the key on the token, log key prints the same vkey; serve wants the log or --no-log") {
  const auto label = new_key_label();
  int rc = -1;
  const auto vkey = log_cli("init", label, &rc);
  REQUIRE_MESSAGE(rc == 0, vkey);
  const auto key = note::Ed25519Verifier::parse(vkey);
  CHECK(key.name() == kOrigin);
  CHECK(log_cli("key", label, &rc) == vkey);
  CHECK(rc == 0);
  // A second init would replace the key every monitor pinned: refused.
  const auto again = log_cli("init", label, &rc);
  CHECK(rc == 2);
  CHECK(again.find("already holds a key") != std::string::npos);
  // The PIN is never taken from argv; a missing key is an HSM error.
  log_cli("key", label + "-absent", &rc);
  CHECK(rc == 6);

  Database db;
  const std::string base = bin() + " serve --db '" + db.role_nopw + "' --db-password-file " + pki().dir +
                           "/role.pass --plain-http --trust " + pki().dir + "/root.pem --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0";
  const auto refused = sh(base + " 2>&1", &rc);
  CHECK(rc == 2);
  CHECK(refused.find("--no-log") != std::string::npos);
  // A bad log setting is refused before anything listens.
  sh(base + joined(log_args(label)) + " --log-batch 0 2>&1", &rc);
  CHECK(rc == 2);
}

TEST_CASE("4 stations x 75 records at once: dense indexes, every proof verifies, tiles recompute, proofs are consistent") {
  Database db;
  const auto label = new_key_label();
  const auto key = init_key(label);
  Server s(db, log_args(label));
  const auto indexes = publish_all(s, 1000, 300, 4);
  // Dense from 0 and each index once, whatever order the four stations' commits came in.
  std::vector<std::int64_t> sorted;
  for (const auto& [n, i] : indexes) sorted.push_back(i);
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::int64_t> expected(300);
  std::iota(expected.begin(), expected.end(), 0);
  CHECK(sorted == expected);

  const auto cp = checkpoint_of(s, key, 300);
  REQUIRE(cp.checkpoint.size == 300);
  const auto m = s.metrics();
  CHECK(m.find("keyline_backupdb_log_checkpoint_size 300") != std::string::npos);
  CHECK(m.find("keyline_backupdb_log_entries_integrated_total 300") != std::string::npos);
  CHECK(m.find("keyline_backupdb_log_integration_latency_seconds_count 0") == std::string::npos);
  CHECK(m.find("keyline_backupdb_log_checkpoint_age_seconds -1") == std::string::npos);
  const auto head = s.get("/v1/log/checkpoint");
  CHECK(head.header("content-type") == "text/plain; charset=utf-8");
  CHECK(head.header("cache-control") == "no-cache");

  for (const auto& [n, i] : indexes) check_proof(s, pki().record(n), i, cp, key);
  // The record's JSON names its index too; a record nobody published has no proof.
  const auto first = pki().record(1000);
  CHECK(s.get("/v1/records/" + first.chip_id.str()).body.find("\"leaf_index\":" + std::to_string(indexes.at(1000))) !=
        std::string::npos);
  CHECK(s.get("/v1/records/47905189999999999999/proof").status == 404);

  // The monitor's check: every tile recomputed from the entry bundles equals the served one, and
  // gives the signed root; each bundle entry is a record leaf.
  CHECK(tlog::verify_tiles(http_tiles(s), 300, true) == cp.checkpoint.root);
  const auto bundle = http_tiles(s)(tlog::TileId{0, 0, 256, true});
  for (const auto& e : tlog::parse_entry_bundle(bundle, 256)) CHECK_NOTHROW(parse_record_leaf(e));

  // Consistency from every earlier checkpoint (whatever sizes the batches made) to 300.
  const auto sizes = checkpoint_sizes(db);
  REQUIRE(sizes.size() >= 2);
  CHECK(sizes.front() == 0);
  for (const auto size1 : sizes) {
    const auto r = s.get("/v1/log/consistency?from=" + std::to_string(size1) + "&to=300");
    REQUIRE_MESSAGE(r.status == 200, r.body);
    const auto o = json(r.body);
    CHECK(o->getValue<std::uint64_t>("size1") == size1);
    CHECK(o->getValue<std::uint64_t>("size2") == 300);
    // The old root comes from the old checkpoint, as a client that kept it has it.
    const auto old_proof = s.get("/v1/records/" + first.chip_id.str() + "/proof?tree_size=" + std::to_string(size1));
    Bytes root1 = merkle::to_bytes(merkle::empty_root());
    if (size1 > 0 && old_proof.status == 200)
      root1 = merkle::to_bytes(
          tlog::open_checkpoint(json(old_proof.body)->getValue<std::string>("checkpoint"), key, kOrigin).checkpoint.root);
    else if (size1 > 0)
      continue;  // record 1000 is not in that tree
    CHECK_NOTHROW(merkle::verify_consistency(size1, 300, hashes(o, "proof"), root1, merkle::to_bytes(cp.checkpoint.root)));
  }
  const auto latest = s.get("/v1/log/consistency?from=" + std::to_string(sizes[1]));
  CHECK(latest.status == 200);
  CHECK(json(latest.body)->getValue<std::uint64_t>("size2") == 300);
  CHECK(s.get("/v1/log/consistency?from=301&to=300").status == 400);
  CHECK(s.get("/v1/log/consistency?from=1&to=301").status == 400);
  CHECK(s.get("/v1/log/consistency?from=01&to=300").status == 400);
  CHECK(s.get("/v1/log/consistency?to=300").status == 400);
  CHECK(s.get("/v1/records/" + first.chip_id.str() + "/proof?tree_size=abc").status == 400);
  CHECK(s.get("/v1/records/" + first.chip_id.str() + "/proof?tree_size=301").status == 400);
}

TEST_CASE("tile routes: immutable with a strong ETag, 304, and 400/404 for paths outside the tree") {
  Database db;
  const auto label = new_key_label();
  const auto key = init_key(label);
  Server s(db, log_args(label));
  publish_all(s, 2000, 20, 2);
  checkpoint_of(s, key, 20);
  const auto t = s.get("/v1/log/tile/0/000.p/20");
  REQUIRE(t.status == 200);
  CHECK(t.body.size() == 20 * 32);
  CHECK(t.header("content-type") == "application/octet-stream");
  CHECK(t.header("cache-control") == "public, max-age=31536000, immutable");
  const auto etag = t.header("etag");
  CHECK(etag.size() == 66);
  CHECK(etag.front() == '"');
  CHECK(s.get("/v1/log/tile/0/000.p/20", {{"If-None-Match", etag}}).status == 304);
  const auto e = s.get("/v1/log/tile/entries/000.p/20");
  REQUIRE(e.status == 200);
  CHECK(e.body.size() == 20 * (2 + record_leaf_size));
  CHECK(e.header("cache-control") == "public, max-age=31536000, immutable");
  for (const auto* bad : {"/v1/log/tile/0/0000", "/v1/log/tile/0/x000/000", "/v1/log/tile/64/000",
                          "/v1/log/tile/0/000.p/0", "/v1/log/tile/0/000.p/256", "/v1/log/tile/a/000",
                          "/v1/log/tile/0//000", "/v1/log/tile/entries/000.p/020"})
    CHECK_MESSAGE(s.get(bad).status == 400, bad);
  for (const auto* beyond : {"/v1/log/tile/0/000", "/v1/log/tile/0/001.p/3", "/v1/log/tile/1/000.p/1",
                             "/v1/log/tile/entries/000.p/21", "/v1/log/tile/0/000.p/255"})
    CHECK_MESSAGE(s.get(beyond).status == 404, beyond);
  CHECK(s.client()->post("/v1/log/checkpoint", "x", "text/plain").status == 405);
}

TEST_CASE("restart resumes the tree; a second serve on the database reads but does not integrate, and takes over") {
  Database db;
  const auto label = new_key_label();
  const auto key = init_key(label);
  auto a = std::make_unique<Server>(db, log_args(label));
  publish_all(*a, 3000, 10, 2);
  const auto cp10 = checkpoint_of(*a, key, 10);
  REQUIRE(cp10.checkpoint.size == 10);

  Server b(db, log_args(label));
  CHECK(a->metrics().find("keyline_backupdb_log_integrator 1") != std::string::npos);
  CHECK(b.metrics().find("keyline_backupdb_log_integrator 0") != std::string::npos);
  CHECK(checkpoint_of(b, key, 10).checkpoint == cp10.checkpoint);
  // Published through b, integrated by a (which polls the database), served by both.
  publish_all(b, 3010, 5, 1);
  CHECK(checkpoint_of(b, key, 15).checkpoint.size == 15);
  CHECK(a->metrics().find("keyline_backupdb_log_entries_integrated_total 15") != std::string::npos);
  CHECK(b.metrics().find("keyline_backupdb_log_entries_integrated_total 0") != std::string::npos);

  // a goes away: b takes the lock (its session-level advisory lock went with a's session).
  a->stop();
  publish_all(b, 3015, 5, 1);
  const auto cp20 = checkpoint_of(b, key, 20);
  CHECK(cp20.checkpoint.size == 20);
  CHECK(b.metrics().find("keyline_backupdb_log_integrator 1") != std::string::npos);
  b.stop();

  // A restarted serve reads the tree back from its tiles: the same root for the same size, then on.
  a = std::make_unique<Server>(db, log_args(label));
  CHECK(checkpoint_of(*a, key, 20).checkpoint == cp20.checkpoint);
  publish_all(*a, 3020, 1, 1);
  const auto cp21 = checkpoint_of(*a, key, 21);
  const auto r = a->get("/v1/log/consistency?from=10&to=21");
  REQUIRE(r.status == 200);
  CHECK_NOTHROW(merkle::verify_consistency(10, 21, hashes(json(r.body), "proof"), merkle::to_bytes(cp10.checkpoint.root),
                                           merkle::to_bytes(cp21.checkpoint.root)));
  CHECK(tlog::verify_tiles(http_tiles(*a), 21, true) == cp21.checkpoint.root);
}

TEST_CASE("a tile changed in the database is caught by the monitor's check, and the integrator stops on it") {
  Database db;
  const auto label = new_key_label();
  const auto key = init_key(label);
  auto s = std::make_unique<Server>(db, log_args(label));
  publish_all(*s, 4000, 12, 2);
  const auto cp = checkpoint_of(*s, key, 12);
  s->stop();
  pq::Connection owner(db.owner);
  // The tables refuse the change, the owner's included, until the superuser turns the trigger off.
  CHECK_THROWS_AS(owner.exec("UPDATE log_tiles SET data = data WHERE path = 'tile/entries/000.p/12'"), DbError);
  CHECK_THROWS_AS(owner.exec("DELETE FROM log_checkpoints"), DbError);
  CHECK_THROWS_AS(owner.exec("UPDATE log_sequence SET next_index = next_index + 2"), DbError);
  // Swap one entry of the bundle for another chip's: an attacker rewriting history in place.
  owner.exec("ALTER TABLE log_tiles DISABLE TRIGGER log_tiles_no_update_delete");
  owner.exec("UPDATE log_tiles SET data = overlay(data PLACING '\\xff'::bytea FROM 10 FOR 1) WHERE path = 'tile/entries/000.p/12'");
  owner.exec("ALTER TABLE log_tiles ENABLE TRIGGER log_tiles_no_update_delete");
  s = std::make_unique<Server>(db, log_args(label));
  CHECK(checkpoint_of(*s, key, 12).checkpoint == cp.checkpoint);
  CHECK_THROWS_AS(tlog::verify_tiles(http_tiles(*s), 12, true), FormatError);
  CHECK(tlog::verify_tiles(http_tiles(*s), 12, false) == cp.checkpoint.root);  // level 0 itself is intact
  s->stop();

  // A hash tile changed: the tree no longer gives the signed root, and the integrator refuses to
  // sign on top of it (no new checkpoint, the record stays not-integrated).
  owner.exec("ALTER TABLE log_tiles DISABLE TRIGGER log_tiles_no_update_delete");
  owner.exec("UPDATE log_tiles SET data = overlay(data PLACING '\\x00'::bytea FROM 1 FOR 1) WHERE path = 'tile/0/000.p/12'");
  owner.exec("ALTER TABLE log_tiles ENABLE TRIGGER log_tiles_no_update_delete");
  s = std::make_unique<Server>(db, log_args(label));
  CHECK(tlog::verify_tiles(http_tiles(*s), 12, false) != cp.checkpoint.root);
  publish_all(*s, 4012, 1, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  const auto late = pki().record(4012);
  const auto r = s->get("/v1/records/" + late.chip_id.str() + "/proof");
  CHECK(r.status == 404);
  CHECK(r.body.find("not-integrated") != std::string::npos);
  CHECK(r.header("retry-after") == "1");
  CHECK(slurp(s->log).find("\"code\":3030") != std::string::npos);
}

TEST_CASE("--no-log: publishing still sequences, the log routes answer 404") {
  Database db;
  Server s(db, {"--no-log"});
  const auto idx = publish_all(s, 5000, 3, 1);
  CHECK(idx.at(5000) + idx.at(5001) + idx.at(5002) == 3);
  const auto r = s.get("/v1/log/checkpoint");
  CHECK(r.status == 404);
  CHECK(r.body.find("log-disabled") != std::string::npos);
  // An identical re-publish answers 200 with the same index; a conflicting one 409 with the index in the way.
  const auto rec = pki().record(5001);
  const auto again = s.client("station")->post("/v1/records", rec.to_json(), "application/json");
  CHECK(again.status == 200);
  CHECK(json(again.body)->getValue<std::int64_t>("leaf_index") == idx.at(5001));
  auto other = pki().record(5001);
  other.backup.push_back(0);
  const auto clash = s.client("station")->post("/v1/records", other.to_json(), "application/json");
  CHECK(clash.status == 409);
  CHECK(clash.body.find("\"leaf_index\":" + std::to_string(idx.at(5001))) != std::string::npos);
}

TEST_CASE("records published before the log existed are logged by the migration, in publish order") {
  const auto env = test::pg_env();
  const auto owner = env.create_database("tlogold");
  pq::Connection c(owner);
  const auto& all = backupdb::embedded_migrations();
  REQUIRE(std::string(all.at(2).file) == "0003_log.sql");
  REQUIRE(apply_migrations(c, "schema_migrations", {all[0], all[1]}) == 2);
  // Three records as the public DB wrote them before issue #18, in seq order 6002, 6000, 6001.
  std::vector<Record> recs = {pki().record(6002), pki().record(6000), pki().record(6001)};
  for (const auto& r : recs)
    c.exec("INSERT INTO records (chip_id, imei, record_hash, backup, identity_der, body_json, published_at) "
           "VALUES ($1, $2, $3, $4, $5, $6, now())",
           {r.chip_id.str(), r.imei.str(), r.hash(), r.backup, r.certificates[0], r.to_json()});
  backupdb::Config cfg;
  cfg.db = owner;
  cfg.role_password.assign(kRolePassword, kRolePassword + std::strlen(kRolePassword));
  REQUIRE(backupdb::migrate(cfg) == static_cast<int>(all.size()) - 2);
  // The SQL-built entries are byte for byte what core::encode_record_leaf makes.
  const auto rows = c.exec("SELECT leaf_index, entry FROM log_entries ORDER BY leaf_index");
  REQUIRE(rows.rows() == 3);
  for (int i = 0; i < 3; ++i) {
    CHECK(rows.int64(i, 0) == i);
    CHECK(rows.bytea(i, 1) == encode_record_leaf(recs[i].chip_id, recs[i].imei, recs[i].hash()));
  }
  CHECK(c.exec("SELECT next_index FROM log_sequence").int64(0, 0) == 3);

  const Database db_view(owner, false);
  const auto label = new_key_label();
  const auto key = init_key(label);
  Server s(db_view, log_args(label));
  const auto idx = publish_all(s, 6003, 1, 1);
  CHECK(idx.at(6003) == 3);  // the next index after the migrated ones
  const auto cp = checkpoint_of(s, key, 4);
  for (int i = 0; i < 3; ++i) check_proof(s, recs[i], i, cp, key);
}

// The issue's 10,000 takes about 9 minutes in a Debug build on 2 cores (passed once so); the suite
// runs 1,000 unless KEYLINE_TLOG_TEST_RECORDS says otherwise.
TEST_CASE("many records from two stations at once: every proof verifies, every checkpoint extends the one before") {
  const char* env_n = std::getenv("KEYLINE_TLOG_TEST_RECORDS");
  const std::uint32_t total = env_n ? static_cast<std::uint32_t>(std::stoul(env_n)) : 1000;
  Database db;
  const auto label = new_key_label();
  const auto key = init_key(label);
  Server s(db, log_args(label));
  const auto indexes = publish_all(s, 10000, total, 4);  // threads alternate between the two stations
  std::vector<bool> seen(total, false);
  for (const auto& [n, i] : indexes) {
    REQUIRE(i >= 0);
    REQUIRE(i < static_cast<std::int64_t>(total));
    CHECK_FALSE(seen[static_cast<std::size_t>(i)]);
    seen[static_cast<std::size_t>(i)] = true;
  }
  const auto cp = checkpoint_of(s, key, total);
  REQUIRE(cp.checkpoint.size == total);
  std::uint32_t verified = 0;
  for (const auto& [n, i] : indexes) {
    const auto rec = pki().record(n);
    const auto r = s.get("/v1/records/" + rec.chip_id.str() + "/proof?tree_size=" + std::to_string(total));
    REQUIRE(r.status == 200);
    const auto o = json(r.body);
    const auto leaf = merkle::to_bytes(merkle::leaf_hash(encode_record_leaf(rec.chip_id, rec.imei, rec.hash())));
    if (o->getValue<std::int64_t>("leaf_index") == i &&
        merkle::inclusion_valid(static_cast<std::uint64_t>(i), total, leaf, hashes(o, "proof"),
                                merkle::to_bytes(cp.checkpoint.root)))
      ++verified;
  }
  CHECK(verified == total);
  // Each stored checkpoint, opened with the pinned key, is consistent with the next one.
  pq::Connection c(db.owner);
  const auto notes = c.exec("SELECT note FROM log_checkpoints ORDER BY tree_size");
  REQUIRE(notes.rows() >= 3);
  auto prev = tlog::open_checkpoint(notes.text(0, 0), key, kOrigin).checkpoint;
  for (int row = 1; row < notes.rows(); ++row) {
    const auto next = tlog::open_checkpoint(notes.text(row, 0), key, kOrigin).checkpoint;
    const auto r = s.get("/v1/log/consistency?from=" + std::to_string(prev.size) + "&to=" + std::to_string(next.size));
    REQUIRE(r.status == 200);
    CHECK(merkle::consistency_valid(prev.size, next.size, hashes(json(r.body), "proof"), merkle::to_bytes(prev.root),
                                    merkle::to_bytes(next.root)));
    prev = next;
  }
  CHECK(prev == cp.checkpoint);
  CHECK(tlog::verify_tiles(http_tiles(s), total, true) == cp.checkpoint.root);
}
