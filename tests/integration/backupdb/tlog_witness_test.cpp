// The log's monitor and witness end to end (docs/transparency.md, "Monitor" and "Witness"): the real
// `keyline-backupdb serve` on the fixture PostgreSQL cluster with its log key on a SoftHSM token of
// its own, HTTPS, and the real `monitor`, `witness` and `witness-push` programs. Records from two
// stations at once; the monitor follows the whole run, resuming; a record swapped by SQL as the
// database superuser is found; the witness cosigns the log and refuses a second tree under the same
// key (a fork). The fixture part (PKI, database, server) is tlog_test.cpp's, copied.
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
#include "keyline/core/tlog_cosignature.h"
#include "keyline/core/tlog_tiles.h"
#include "keyline/recovery/errors.h"
#include "keyline/recovery/log_check.h"
#include "keyline/recovery/recovery.h"
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




struct Ran {
  int rc = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// A program run to its end: exit code, stdout and stderr apart (the monitor's findings are its stdout).
Ran run(const std::string& args) {
  static std::atomic<int> n{0};
  const std::string base = pki().dir + "/run" + std::to_string(n++);
  Ran r;
  const int st = std::system((args + " > " + base + ".out 2> " + base + ".err").c_str());
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = slurp(base + ".out");
  r.err = slurp(base + ".err");
  return r;
}

std::string monitor_cmd(const Server& s, const std::string& vkey, const std::string& state) {
  const auto& d = pki().dir;
  return bin() + " monitor --url " + s.url + " --ca " + d + "/service_ca.pem --log-key '" + vkey + "' --state " + state +
         " --trust " + d + "/root.pem --once";
}

// A running `keyline-backupdb witness` for one log key.
struct WitnessProc {
  std::string url, dir, vkey;
  pid_t pid = -1;
  WitnessProc(const std::string& log_vkey, const std::string& name) {
    dir = pki().dir + "/witness-" + name;
    std::filesystem::create_directories(dir);
    const auto init = run(bin() + " witness init --witness-key-file " + dir + "/key --name " + name);
    REQUIRE_MESSAGE(init.rc == 0, init.err);
    vkey = init.out.substr(0, init.out.find('\n'));
    const int port = test::free_port();
    url = "http://127.0.0.1:" + std::to_string(port);
    std::vector<std::string> args = {bin(), "witness", "--log-key", log_vkey, "--witness-key-file", dir + "/key",
                                     "--state", dir + "/state", "--listen", "127.0.0.1:" + std::to_string(port)};
    pid = fork();
    if (pid == 0) {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      const std::string out = dir + "/out";
      if (!freopen(out.c_str(), "w", stdout) || !freopen(out.c_str(), "a", stderr)) _exit(127);
      execv(argv[0], argv.data());
      _exit(127);
    }
    for (int i = 0; i < 100; ++i) {
      http::ClientOptions o;
      o.base_url = url;
      o.connect_attempts = 1;
      try {
        if (http::Client(o).get("/add-checkpoint").status == 405) return;
      } catch (const Error&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    FAIL("witness did not come up: " << slurp(dir + "/out"));
  }
  ~WitnessProc() {
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    int st = 0;
    waitpid(pid, &st, 0);
  }
  Ran push(const Server& s, const std::string& log_vkey, const std::string& out) const {
    return run(bin() + " witness-push --url " + s.url + " --ca " + pki().dir + "/service_ca.pem --witness " + url +
               " --log-key '" + log_vkey + "' --out " + out);
  }
};

// Swaps the record of chip `n` for another valid record of the same chip (another backup): what an
// operator with the superuser's password could do behind the service's back.
void swap_record_by_sql(const Database& db, std::uint32_t n) {
  Record other = pki().record(n);
  other.backup = seal_backup(SecureBytes(32, 0x17), other.chip_id, SecureBytes(5, 0x55));
  pq::Connection c(db.owner);
  c.exec("ALTER TABLE records DISABLE TRIGGER records_no_update_delete");
  c.exec("UPDATE records SET body_json = $1, record_hash = $2, backup = $3 WHERE chip_id = $4",
         {other.to_json(), other.hash(), Bytes(other.backup.begin(), other.backup.end()), other.chip_id.str()});
  c.exec("ALTER TABLE records ENABLE TRIGGER records_no_update_delete");
}

// The latest checkpoint once it is of `size` and (when `cosigner` is given) carries its valid
// cosignature: serve --witness cosigns after the commit, so it may lag the checkpoint a little.
std::string cosigned_of(const Server& s, const note::Ed25519Verifier& key, std::uint64_t size,
                        const std::vector<tlog::CosignerKey>& cosigners) {
  std::string last;
  for (int i = 0; i < 100; ++i) {
    const auto r = s.get("/v1/log/checkpoint");
    if (r.status == 200 && tlog::open_checkpoint(r.body, key, kOrigin).checkpoint.size == size) {
      last = r.body;
      if (tlog::verified_cosigners(r.body, cosigners).size() == cosigners.size()) return r.body;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  FAIL("no checkpoint of size " << size << " with " << cosigners.size() << " cosignature(s); last: " << last);
  throw std::logic_error("unreachable");
}

// recovery's own log check (the one `keyline-recovery --witness-key K --witnesses 1` runs) of record
// n against a live DB; the error code it refuses with, 0 when it accepts.
int recovery_check(const Server& s, const std::string& log_vkey, const std::string& witness_vkey, std::uint32_t n,
                   const std::string& state) {
  recovery::DbOptions db;
  db.url = s.url;
  db.ca_file = pki().dir + "/service_ca.pem";
  recovery::LogOptions lo;
  lo.log_key = log_vkey;
  lo.state_file = state;
  lo.witness_keys = {witness_vkey};
  lo.witnesses = 1;
  try {
    recovery::check_record_in_log(db, lo, pki().record(n), nullptr);
    return 0;
  } catch (const Error& e) {
    MESSAGE(e.what());
    return e.numeric();
  }
}

}  // namespace

// KEYLINE_TLOG_MONITOR_RECORDS (default 400, half before the first monitor pass and half after):
// the issue's 10,000 run through tlog_test.cpp's many-records case; here the monitor's work.
TEST_CASE("monitor: follows the log of two stations' records, resumes, and finds a record swapped by SQL") {
  const char* env_n = std::getenv("KEYLINE_TLOG_MONITOR_RECORDS");
  const std::uint32_t half = (env_n ? static_cast<std::uint32_t>(std::stoul(env_n)) : 400) / 2;
  Database db;
  const auto label = new_key_label();
  const auto key = init_key(label);
  const std::string state = pki().dir + "/monitor-" + label;
  auto s = std::make_unique<Server>(db, log_args(label));
  auto indexes = publish_all(*s, 30000, half, 4);  // threads alternate between the two stations
  checkpoint_of(*s, key, half);
  const auto first = run(monitor_cmd(*s, key.text(), state));
  CHECK_MESSAGE(first.rc == 0, first.out << first.err);
  CHECK(first.out.empty());
  CHECK(first.err.find(std::to_string(half) + " new entries checked, 0 finding(s)") != std::string::npos);

  const auto more = publish_all(*s, 30000 + half, half, 4);
  indexes.insert(more.begin(), more.end());
  const auto cp = checkpoint_of(*s, key, 2 * half);
  REQUIRE(cp.checkpoint.size == 2 * half);
  for (const auto& [n, i] : indexes) check_proof(*s, pki().record(n), i, cp, key);
  CHECK(tlog::verify_tiles(http_tiles(*s), cp.checkpoint.size, true) == cp.checkpoint.root);
  // Behind the service: one record of the second half swapped; the server restarted (its cache gone).
  swap_record_by_sql(db, 30000 + half + 7);
  s.reset();
  s = std::make_unique<Server>(db, log_args(label));
  const auto second = run(monitor_cmd(*s, key.text(), state));
  CHECK(second.rc == 3);
  // Only the new half is read (the tree's right edge was kept), and the swap is the one finding.
  CHECK_MESSAGE(second.err.find(std::to_string(half) + " new entries checked, 1 finding(s)") != std::string::npos, second.err);
  CHECK(second.out.find("\"finding\":\"record-mismatch\"") != std::string::npos);
  CHECK(second.out.find(pki().record(30000 + half + 7).chip_id.str()) != std::string::npos);

  // Nothing new: the swap was reported once, the tree is clean.
  const auto third = run(monitor_cmd(*s, key.text(), state));
  CHECK_MESSAGE(third.rc == 0, third.out << third.err);

  // A record of the first half, checked clean long ago, swapped now: only --recheck looks again.
  swap_record_by_sql(db, 30000 + 3);
  s.reset();
  s = std::make_unique<Server>(db, log_args(label));
  CHECK(run(monitor_cmd(*s, key.text(), state)).rc == 0);
  const auto recheck = run(monitor_cmd(*s, key.text(), state) + " --recheck");
  CHECK(recheck.rc == 3);
  CHECK(recheck.out.find(pki().record(30000 + 3).chip_id.str()) != std::string::npos);
  CHECK(recheck.out.find(pki().record(30000 + half + 7).chip_id.str()) != std::string::npos);  // and the first swap
}

TEST_CASE("witness: cosigns the public DB's checkpoints as it grows, refuses a second tree under the same key") {
  Database db;
  const auto label = new_key_label();
  const auto key = init_key(label);
  Server s(db, log_args(label));
  WitnessProc w(key.text(), "witness.test/w1");
  const auto wkey = tlog::CosignerKey::parse(w.vkey);

  publish_all(s, 40000, 20, 2);
  checkpoint_of(s, key, 20);
  const std::string note1 = pki().dir + "/cosigned-" + label + "-1";
  const auto p1 = w.push(s, key.text(), note1);
  REQUIRE_MESSAGE(p1.rc == 0, p1.err);
  CHECK(tlog::verified_cosigners(slurp(note1), {wkey}) == std::vector<std::string>{"witness.test/w1"});
  CHECK(tlog::open_checkpoint(slurp(note1), key, kOrigin).checkpoint.size == 20);

  publish_all(s, 40020, 30, 2);
  checkpoint_of(s, key, 50);
  const std::string note2 = pki().dir + "/cosigned-" + label + "-2";
  const auto p2 = w.push(s, key.text(), note2);  // 409 with 20, then the DB's proof 20 -> 50
  REQUIRE_MESSAGE(p2.rc == 0, p2.err);
  CHECK(tlog::open_checkpoint(slurp(note2), key, kOrigin).checkpoint.size == 50);
  CHECK(tlog::verified_cosigners(slurp(note2), {wkey}).size() == 1);

  // The same log key over another database: another tree under the same origin, a fork.
  Database db2;
  Server forked(db2, log_args(label));
  publish_all(forked, 50000, 60, 2);
  checkpoint_of(forked, key, 60);
  const auto p3 = w.push(forked, key.text(), pki().dir + "/cosigned-" + label + "-3");
  CHECK(p3.rc == 3);
  CHECK_MESSAGE(p3.err.find("HTTP 422") != std::string::npos, p3.err);
  // A monitor that followed the first tree sees the second as a fork (exit 5), again on every pass.
  const std::string mstate = pki().dir + "/monitor-fork-" + label;
  REQUIRE(run(monitor_cmd(s, key.text(), mstate)).rc == 0);
  for (int pass = 0; pass < 2; ++pass) {
    const auto m = run(monitor_cmd(forked, key.text(), mstate));
    CHECK(m.rc == 5);
    CHECK(m.out.find("\"finding\":\"log-fork\"") != std::string::npos);
  }

  // A checkpoint under another log key (another label: same origin, other key): 403, never cosigned.
  const auto label2 = new_key_label();
  init_key(label2);
  Database db3;
  Server other(db3, log_args(label2));
  publish_all(other, 60000, 3, 1);
  const std::string other_vkey = run(bin() + " log key" + joined(log_args(label2))).out;
  http::ClientOptions o;
  o.base_url = w.url;
  const auto cp = other.get("/v1/log/checkpoint");
  REQUIRE(cp.status == 200);
  CHECK(http::Client(o).post("/add-checkpoint", "old 50\n\n" + cp.body, "text/plain").status == 403);
}

TEST_CASE("witness: serve --witness serves the cosigned checkpoint; recovery --witnesses 1 accepts it, and refuses one "
          "the witness would not cosign (a fork) or that no witness saw") {
  Database db;
  const auto label = new_key_label();
  const auto key = init_key(label);
  auto w = std::make_unique<WitnessProc>(key.text(), "witness.test/w2");
  const auto wkey = tlog::CosignerKey::parse(w->vkey);
  auto args = log_args(label);
  args.insert(args.end(), {"--witness", w->url});
  Server s(db, args);

  publish_all(s, 70000, 10, 2);
  const auto note10 = cosigned_of(s, key, 10, {wkey});
  CHECK(tlog::verified_cosigners(note10, {wkey}) == std::vector<std::string>{"witness.test/w2"});
  // The proof answer's checkpoint carries it too, and the served note still opens under the log key.
  const auto proof = s.get("/v1/records/" + pki().record(70003).chip_id.str() + "/proof?tree_size=10");
  REQUIRE(proof.status == 200);
  CHECK(tlog::verified_cosigners(json(proof.body)->getValue<std::string>("checkpoint"), {wkey}).size() == 1);
  const std::string state = pki().dir + "/recovery-state-" + label;
  CHECK(recovery_check(s, key.text(), w->vkey, 70003, state) == 0);

  // Growth: the witness answers "old 0" with 409 (10), the integrator sends its own proof 10 -> 25.
  publish_all(s, 70010, 15, 2);
  cosigned_of(s, key, 25, {wkey});
  CHECK(recovery_check(s, key.text(), w->vkey, 70020, state) == 0);
  CHECK(s.metrics().find("keyline_backupdb_log_witness_cosignatures_total 0\n") == std::string::npos);

  // Another witness's key pinned: this cosignature does not count (5013).
  WitnessProc other(key.text(), "witness.test/w3");
  CHECK(recovery_check(s, key.text(), other.vkey, 70020, state) == 5013);

  // The same log key over another database, pushed to the same witness: a fork it refuses. That DB
  // still integrates and serves its checkpoint, uncosigned, and recovery refuses it.
  Database db2;
  Server forked(db2, args);
  publish_all(forked, 71000, 30, 2);
  checkpoint_of(forked, key, 30);
  CHECK(recovery_check(forked, key.text(), w->vkey, 71004, pki().dir + "/recovery-fork-" + label) == 5013);
  CHECK(slurp(forked.log).find("\"event\":\"log_witness\"") != std::string::npos);

  // A serve without --witness: its checkpoints carry no cosignature, recovery --witnesses 1 refuses.
  Database db3;
  Server plain(db3, log_args(label));
  publish_all(plain, 72000, 3, 1);
  checkpoint_of(plain, key, 3);
  CHECK(recovery_check(plain, key.text(), w->vkey, 72001, pki().dir + "/recovery-plain-" + label) == 5013);

  // The witness down: integration goes on, the new checkpoint is served without a cosignature.
  w.reset();
  publish_all(s, 70025, 5, 1);
  const auto cp30 = checkpoint_of(s, key, 30);
  CHECK(cp30.checkpoint.size == 30);
  CHECK(tlog::verified_cosigners(s.get("/v1/log/checkpoint").body, {wkey}).empty());
  CHECK(s.metrics().find("keyline_backupdb_log_witness_failures_total 0\n") == std::string::npos);
  CHECK(recovery_check(s, key.text(), wkey.text(), 70027, state) == 5013);
}
