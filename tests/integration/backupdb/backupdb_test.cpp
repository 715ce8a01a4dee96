// keyline-backupdb end to end: the real server program on the fixture PostgreSQL cluster, real TLS,
// curl and openssl as the outside clients.
#include <doctest/doctest.h>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pkcs10.h>
#include <botan/pkcs8.h>
#include <botan/x509_ca.h>
#include <botan/x509self.h>
#include <botan/x509_ext.h>
#include <botan/x509_key.h>
#include <botan/pubkey.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <thread>

#include "keyline/backupdb/migrate.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/http.h"
#include "keyline/core/pq.h"
#include "keyline/core/record.h"
#include "backupdb_fixture.h"
#include "testenv.h"

using namespace keyline;
using namespace keyline::core;

namespace {

// All the PKI the tests need, made once per process in a temp dir.
struct Pki : DevicePkiBase {
  std::unique_ptr<Botan::ECDSA_PrivateKey> other_root_key, other_ca_key;
  std::unique_ptr<Botan::X509_Certificate> other_root, other_ca;

  Pki() : DevicePkiBase("/tmp/kl-backupdb-test.XXXXXX") {
    other_root_key = new_key(rng);
    other_root = std::make_unique<Botan::X509_Certificate>(
        make_root_certificate(*other_root_key, "Other Root", "elsewhere", rng));
    other_ca_key = new_key(rng);
    other_ca = std::make_unique<Botan::X509_Certificate>(
        make_ca_certificate(*other_root, *other_root_key, *other_ca_key, "Other Device CA", "elsewhere", 0, rng));
    write_file(dir + "/root.pem", to_pem(*root));
    write_file(dir + "/device_ca.pem", to_pem(*device_ca));
    write_file(dir + "/other_root.pem", to_pem(*other_root));

    // TLS: service CA -> server (127.0.0.1, localhost) and station client; a foreign CA -> client;
    // an expired station client certificate.
    auto svc_key = new_key(rng);
    auto svc = make_ca_certificate(*root, *root_key, *svc_key, "Test Service CA", "keyline test", 0, rng);
    write_file(dir + "/service_ca.pem", to_pem(svc));
    auto srv_key = new_key(rng);
    write_file(dir + "/server.pem", to_pem(issue_tls_certificate(svc, *svc_key, *srv_key, "backupdb",
                                                                 {"127.0.0.1", "localhost"}, TlsRole::Server, rng)));
    write_file(dir + "/server.key", Botan::PKCS8::PEM_encode(*srv_key));
    auto st_key = new_key(rng);
    write_file(dir + "/station.pem", to_pem(issue_station_certificate(svc, *svc_key, *st_key, "station-1", rng)));
    write_file(dir + "/station.key", Botan::PKCS8::PEM_encode(*st_key));
    // The KPS's server certificate, from the same service CA as the public DB's and the station's.
    auto kps_key = new_key(rng);
    write_file(dir + "/kps.pem", to_pem(issue_tls_certificate(svc, *svc_key, *kps_key, "kps", {"127.0.0.1"},
                                                              TlsRole::Server, rng)));
    write_file(dir + "/kps.key", Botan::PKCS8::PEM_encode(*kps_key));
    auto foreign_ca_key = new_key(rng);
    auto foreign_ca = make_root_certificate(*foreign_ca_key, "Foreign CA", "elsewhere", rng);
    auto fo_key = new_key(rng);
    write_file(dir + "/foreign.pem", to_pem(issue_tls_certificate(foreign_ca, *foreign_ca_key, *fo_key, "intruder",
                                                                  {"intruder"}, TlsRole::Client, rng)));
    write_file(dir + "/foreign.key", Botan::PKCS8::PEM_encode(*fo_key));
    // Made here, outside the issuer's lint: the station profile in every respect but its validity
    // (expired), the same valid now (the control: this construction is accepted), and a clientAuth
    // certificate of the station CA without the station policy.
    const auto in_days = [](int days) {
      return Botan::X509_Time(std::chrono::system_clock::now() + std::chrono::hours(24 * days));
    };
    write_pair("expired", svc, *svc_key, "station-old", true,
               Botan::X509_Time("20200101000000Z", Botan::GENERALIZED_TIME),
               Botan::X509_Time("20210101000000Z", Botan::GENERALIZED_TIME));
    write_pair("handmade", svc, *svc_key, "station-2", true, in_days(-1), in_days(30));
    write_pair("nopolicy", svc, *svc_key, "station-3", false, in_days(-1), in_days(30));
  }

  // A clientAuth certificate of `ca` for station `id`: OU and CN as the station profile has them,
  // with or without the station policy, valid from nb to na.
  void write_pair(const std::string& name, const Botan::X509_Certificate& ca, const Botan::Private_Key& ca_key,
                  const std::string& id, bool policy, const Botan::X509_Time& nb, const Botan::X509_Time& na) {
    auto key = new_key(rng);
    Botan::Extensions ext;
    ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
    ext.add(new Botan::Cert_Extension::Key_Usage(Botan::DIGITAL_SIGNATURE), true);
    ext.add(new Botan::Cert_Extension::Extended_Key_Usage(std::vector<Botan::OID>{Botan::OID("1.3.6.1.5.5.7.3.2")}));
    if (policy)
      ext.add(new Botan::Cert_Extension::Certificate_Policies(std::vector<Botan::OID>{Botan::OID(kStationPolicy)}));
    ext.add(new Botan::Cert_Extension::Subject_Key_ID(key->subject_public_key(), "SHA-256"));
    ext.add(new Botan::Cert_Extension::Authority_Key_ID(ca.subject_key_id()));
    Botan::X509_DN dn;
    dn.add_attribute("X520.OrganizationalUnit", kStationUnit);
    dn.add_attribute("X520.CommonName", id);
    Botan::AlgorithmIdentifier sig_algo;
    std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(ca_key, rng, "SHA-256", sig_algo));
    const auto cert = Botan::X509_CA::make_cert(signer.get(), rng, sig_algo, key->subject_public_key(), nb, na,
                                                ca.subject_dn(), dn, ext);
    write_file(dir + "/" + name + ".pem", to_pem(cert));
    write_file(dir + "/" + name + ".key", Botan::PKCS8::PEM_encode(*key));
  }

  // A well-formed record for chip/IMEI; `salt` changes the backup so the content differs.
  Record record(const std::string& chip_hex, const std::string& imei, const std::string& salt = "",
                bool foreign = false) {
    Record r;
    r.chip_id = ChipId::parse(chip_hex);
    r.imei = Imei::parse(imei);
    SecureBytes chip_key(32, 0x42);
    const std::string pt = "data package for " + chip_hex + salt;
    r.backup = seal_backup(chip_key, r.chip_id, SecureBytes(pt.begin(), pt.end()));
    auto dev_key = new_key(rng);
    const auto& ca = foreign ? *other_ca : *device_ca;
    const auto& ca_key = foreign ? *other_ca_key : *device_ca_key;
    auto cert = issue_identity_certificate(ca, ca_key, *dev_key, r.imei, r.chip_id, kDefaultHwType, rng);
    r.certificates = {cert.BER_encode(), ca.BER_encode()};
    return r;
  }
};

Pki& pki() {
  static Pki p;
  return p;
}

struct Reply {
  int status = 0;
  std::string body;
  std::string headers;  // raw header block
  std::string header(const std::string& name) const {  // name in lower case
    std::string lower = headers;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const auto pos = lower.find("\r\n" + name + ":");
    if (pos == std::string::npos) return {};
    auto b = pos + 2 + name.size() + 1;
    while (b < headers.size() && headers[b] == ' ') ++b;
    const auto e = headers.find('\r', b);
    return headers.substr(b, e - b);
  }
};

std::atomic<int> g_counter{0};

// Runs curl; `args` are extra curl arguments (already shell-quoted where needed).
Reply curl(const std::string& args) {
  const std::string base = pki().dir + "/curl" + std::to_string(::getpid()) + "_" + std::to_string(g_counter++);
  const std::string cmd = "curl -s -S --max-time 20 -o " + base + ".body -D " + base + ".hdr -w '%{http_code}' " + args;
  Reply r;
  r.status = std::atoi(sh(cmd).c_str());
  r.body = slurp(base + ".body");
  r.headers = slurp(base + ".hdr");
  std::remove((base + ".body").c_str());
  std::remove((base + ".hdr").c_str());
  return r;
}

// A migrated database and a running server program.
struct Server {
  std::string owner_conninfo;
  std::string role_conninfo;
  std::string url;
  std::string log;
  int ops_port = 0;
  pid_t pid = -1;

  explicit Server(const std::vector<std::string>& extra = {}, bool plain = false) {
    const auto env = test::pg_env();
    owner_conninfo = env.create_database("bdb");
    backupdb::Config cfg;
    cfg.db = owner_conninfo;
    cfg.role_password.assign(kRolePassword, kRolePassword + std::strlen(kRolePassword));
    REQUIRE(backupdb::migrate(cfg) == static_cast<int>(backupdb::embedded_migrations().size()));
    CHECK(backupdb::migrate(cfg) == 0);  // idempotent
    // The server's --db carries no password (a password on a command line is refused): it reads it
    // from --db-password-file. role_conninfo, with the password, is for the test's own connections.
    const std::string role_nopw = "host=" + env.host + " port=" + std::to_string(env.port) +
                                  " user=keyline_backupdb dbname=" + dbname_of(owner_conninfo) + " connect_timeout=5";
    role_conninfo = role_nopw + " password=" + kRolePassword;
    const int port = test::free_port();
    const auto& d = pki().dir;
    log = d + "/server" + std::to_string(port) + ".log";
    write_file(d + "/role.pass", std::string(kRolePassword) + "\n");
    ops_port = test::free_port();
    std::vector<std::string> args = {test::binary_dir() + "/bin/keyline-backupdb", "serve", "--db", role_nopw,
                                     "--db-password-file", d + "/role.pass",
                                     "--listen", "127.0.0.1:" + std::to_string(port), "--trust", d + "/root.pem",
                                     "--ops-listen", "127.0.0.1:" + std::to_string(ops_port), "--log", log,
                                     // The log has its own tests (tlog_test.cpp, with the key on the token).
                                     "--no-log"};
    if (plain) {
      args.push_back("--plain-http");
    } else {
      for (const auto& a : {"--tls-cert", "server.pem", "--tls-key", "server.key", "--station-ca", "service_ca.pem"}) {
        const std::string s = a;
        args.push_back(s.rfind("--", 0) == 0 ? s : d + "/" + s);
      }
    }
    args.insert(args.end(), extra.begin(), extra.end());
    // KEYLINE_TEST_WRAP="gdb -batch -ex run -ex bt --args" runs the server under a debugger.
    if (const char* wrap = std::getenv("KEYLINE_TEST_WRAP")) {
      std::istringstream ws(wrap);
      std::vector<std::string> pre{std::istream_iterator<std::string>(ws), std::istream_iterator<std::string>()};
      if (!pre.empty()) pre[0] = sh("command -v " + pre[0]).substr(0, sh("command -v " + pre[0]).find('\n'));
      args.insert(args.begin(), pre.begin(), pre.end());
    }
    url = std::string(plain ? "http" : "https") + "://127.0.0.1:" + std::to_string(port);
    pid = spawn(args, log + ".out");
    for (int i = 0; i < 100; ++i) {
      if (get("/healthz").status == 200) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    FAIL("server did not come up: " << slurp(log + ".out"));
  }
  ~Server() {
    if (pid > 0) {
      int st = 0;
      if (waitpid(pid, &st, WNOHANG) == pid) {
        FAIL_CHECK("server exited early: " << (WIFSIGNALED(st) ? "signal " + std::to_string(WTERMSIG(st))
                                                                : "status " + std::to_string(WEXITSTATUS(st))));
      } else {
        kill(pid, SIGTERM);
        waitpid(pid, &st, 0);
        CHECK_MESSAGE((WIFEXITED(st) && WEXITSTATUS(st) == 0), "server did not stop cleanly");
      }
    }
  }
  std::string tls() const { return url.rfind("https", 0) == 0 ? " --cacert " + pki().dir + "/service_ca.pem" : ""; }
  std::string client(const std::string& who) const {
    return " --cert " + pki().dir + "/" + who + ".pem --key " + pki().dir + "/" + who + ".key";
  }
  Reply get(const std::string& path, const std::string& extra = "") const {
    return curl(tls() + " " + extra + " '" + url + path + "'");
  }
  // The operations listener (plain HTTP on loopback).
  Reply ops(const std::string& path) const {
    return curl("'http://127.0.0.1:" + std::to_string(ops_port) + path + "'");
  }
  Reply publish(const std::string& json, const std::string& who = "station",
                const std::string& ctype = "application/json") const {
    static std::atomic<int> n{0};
    const std::string f = pki().dir + "/body" + std::to_string(::getpid()) + "_" + std::to_string(n++) + ".json";
    write_file(f, json);
    Reply r = curl(tls() + (who.empty() ? "" : client(who)) + " -X POST -H 'Content-Type: " + ctype +
                   "' --data-binary @" + f + " '" + url + "/v1/records'");
    std::remove(f.c_str());
    return r;
  }
};

}  // namespace

TEST_CASE("publish and read back through curl; the certificate verifies with openssl") {
  Server s;
  auto rec = pki().record("47905000000000012345", "357805023984942");
  const auto json = rec.to_json();
  auto r = s.publish(json);
  REQUIRE_MESSAGE(r.status == 201, r.body);
  CHECK(r.header("location") == "/v1/records/47905000000000012345");

  auto g = s.get("/v1/records/47905000000000012345");
  REQUIRE(g.status == 200);
  CHECK(g.header("content-type") == "application/json");
  CHECK(g.header("cache-control") == "public, max-age=31536000, immutable");
  CHECK(g.header("etag") == "\"" + rec.hash() + "\"");
  const auto back = Record::from_json(g.body);
  CHECK(back.hash() == rec.hash());
  CHECK(g.body.find("\"published_at\"") != std::string::npos);
  // Lower-case chip IDs name the same record.
  CHECK(s.get("/v1/records/47905000000000012345").status == 200);
  CHECK(s.get("/v1/records/47905000000000012345", "-H 'If-None-Match: \"" + rec.hash() + "\"'").status == 304);
  CHECK(s.get("/v1/records/479050000000000abcde").status == 404);

  auto b = s.get("/v1/records/47905000000000012345/backup");
  CHECK(b.status == 200);
  CHECK(b.header("content-type") == "application/octet-stream");
  CHECK(b.body == std::string(rec.backup.begin(), rec.backup.end()));

  auto der = s.get("/v1/records/47905000000000012345/certificate");
  CHECK(der.status == 200);
  CHECK(der.header("content-type") == "application/pkix-cert");
  CHECK(der.body == std::string(rec.certificates[0].begin(), rec.certificates[0].end()));
  auto pem = s.get("/v1/records/47905000000000012345/certificate", "-H 'Accept: application/x-pem-file'");
  REQUIRE(pem.status == 200);
  const std::string leaf = pki().dir + "/leaf.pem";
  write_file(leaf, pem.body);
  int rc = -1;
  const auto out = sh("openssl verify -CAfile " + pki().dir + "/root.pem -untrusted " + pki().dir + "/device_ca.pem " +
                          leaf + " 2>&1",
                      &rc);
  CHECK_MESSAGE(rc == 0, out);

  auto byimei = s.get("/v1/imei/357805023984942");
  CHECK(byimei.status == 200);
  CHECK(byimei.body == g.body);
  CHECK(s.get("/v1/ca").body.find("BEGIN CERTIFICATE") != std::string::npos);

  // Identical re-publish is 200 and changes nothing.
  auto again = s.publish(json);
  CHECK(again.status == 200);

  // /metrics is on the operations listener only.
  CHECK(s.get("/metrics").status == 404);
  auto m = s.ops("/metrics");
  CHECK(m.status == 200);
  CHECK(m.body.find("keyline_backupdb_records_published_total 1") != std::string::npos);
  CHECK(m.body.find("keyline_backupdb_requests_total{route=\"record\",status=\"200\"}") != std::string::npos);
  CHECK(m.body.find("keyline_backupdb_request_duration_seconds_bucket{le=\"+Inf\"}") != std::string::npos);
  // One JSON line per request in the log.
  const auto log = slurp(s.log);
  CHECK(log.find("\"route\":\"publish\",\"status\":201") != std::string::npos);
}

TEST_CASE("every error status from a real request") {
  Server s({"--body-limit", "20000"});
  auto rec = pki().record("47905000000000000001", "490154203237518");
  REQUIRE(s.publish(rec.to_json()).status == 201);

  // 400: malformed chip ID, SQL injection as a chip ID, malformed body, bad IMEI.
  auto inj = s.get("/v1/records/%27%3B%20DROP%20TABLE%20records%3B%20--");
  CHECK(inj.status == 400);
  CHECK(inj.header("content-type") == "application/problem+json");
  CHECK(s.get("/v1/records/0123").status == 400);
  CHECK(s.get("/v1/records/4790500000000000000G").status == 400);
  CHECK(s.get("/v1/imei/490154203237519").status == 400);
  CHECK(s.publish("{not json").status == 400);
  CHECK(s.publish("{\"chip_id\":\"47905000000000000002\"}").status == 400);
  // The records are still there after the injection attempt.
  CHECK(s.get("/v1/records/47905000000000000001").status == 200);

  // 401 without a client certificate, 403 with a foreign or expired one.
  CHECK(s.publish(rec.to_json(), "").status == 401);
  auto foreign = s.publish(rec.to_json(), "foreign");
  CHECK(foreign.status == 403);
  CHECK(foreign.header("content-type") == "application/problem+json");
  CHECK(s.publish(rec.to_json(), "expired").status == 403);

  // 404 unknown route, 405 wrong method.
  CHECK(s.get("/v2/records").status == 404);
  auto del = s.get("/v1/records/47905000000000000001", "-X DELETE");
  CHECK(del.status == 405);
  CHECK(del.header("allow") == "GET, HEAD");
  CHECK(s.get("/v1/records", "").status == 405);

  // 409: different content for the same chip ID, and for the same IMEI on another chip.
  auto other = pki().record("47905000000000000001", "490154203237518", "changed");
  auto c1 = s.publish(other.to_json());
  CHECK(c1.status == 409);
  CHECK(c1.body.find(rec.hash()) != std::string::npos);
  CHECK(c1.body.find(other.hash()) != std::string::npos);
  auto c2 = s.publish(pki().record("47905000000000000009", "490154203237518").to_json());
  CHECK(c2.status == 409);
  CHECK(c2.body.find("\"conflict_on\":\"imei\"") != std::string::npos);

  // 413 over the body limit, 415 wrong media type, 422 a chain to another root.
  CHECK(s.publish("{\"pad\":\"" + std::string(30000, 'x') + "\"}").status == 413);
  CHECK(s.publish(rec.to_json(), "station", "text/plain").status == 415);
  auto bad_chain = s.publish(pki().record("47905000000000000003", "260531793113837", "", true).to_json());
  CHECK(bad_chain.status == 422);

  // The first record is unchanged by all of the above.
  auto g = s.get("/v1/records/47905000000000000001");
  CHECK(Record::from_json(g.body).hash() == rec.hash());
}

TEST_CASE("publish refuses a record whose certificate, IMEI and backup do not name the same device") {
  Server s;
  auto a = pki().record("47905000000000000301", "260531793113837");
  auto b = pki().record("47905000000000000302", "490154203237518");
  Record wrong_backup = a;  // backup header names chip ...302
  wrong_backup.backup = b.backup;
  Record wrong_imei = a;  // certificate says 260531793113837
  wrong_imei.imei = b.imei;
  Record wrong_chip = a;  // certificate says ...301
  wrong_chip.chip_id = b.chip_id;
  wrong_chip.backup = b.backup;
  for (const auto* r : {&wrong_backup, &wrong_imei, &wrong_chip}) {
    auto reply = s.publish(r->to_json());
    CHECK_MESSAGE(reply.status == 422, reply.body);
    CHECK(reply.header("content-type") == "application/problem+json");
  }
  pq::Connection c(s.owner_conninfo);
  CHECK(c.exec("SELECT count(*) FROM records").int64(0, 0) == 0);
}

TEST_CASE("429 when a client exceeds its rate") {
  Server s({"--rate", "2"});
  int limited = 0;
  for (int i = 0; i < 10; ++i) {
    auto r = s.get("/v1/records/47905000000000000001");
    if (r.status == 429) {
      ++limited;
      CHECK(r.header("retry-after") == "1");
    } else {
      CHECK(r.status == 404);
    }
  }
  CHECK(limited >= 5);
}

TEST_CASE("32 concurrent publishers of one chip ID: exactly one record, the rest 409") {
  Server s;
  std::vector<std::string> bodies;
  for (int i = 0; i < 32; ++i)
    bodies.push_back(pki().record("47905000000000000777", Imei::from_tac_serial("35780502", 1000 + i).str(),
                                  std::to_string(i)).to_json());
  std::vector<int> status(32);
  std::vector<std::thread> ts;
  for (int i = 0; i < 32; ++i) ts.emplace_back([&, i] { status[i] = s.publish(bodies[i]).status; });
  for (auto& t : ts) t.join();
  int created = 0, conflict = 0;
  for (int st : status) {
    created += st == 201;
    conflict += st == 409;
  }
  CHECK(created == 1);
  CHECK(conflict == 31);
  pq::Connection c(s.owner_conninfo);
  CHECK(c.exec("SELECT count(*) FROM records").int64(0, 0) == 1);
}

TEST_CASE("a record cannot be updated or deleted, even with direct SQL") {
  Server s;
  REQUIRE(s.publish(pki().record("47905000000000000042", "260531793113837").to_json()).status == 201);
  pq::Connection role(s.role_conninfo), owner(s.owner_conninfo);
  auto refused = [](pq::Connection& c, const std::string& sql) {
    try {
      c.exec(sql);
      return false;
    } catch (const DbError& e) {
      return e.sqlstate() == "42501";  // insufficient_privilege: by the grants or by the trigger
    }
  };
  CHECK(refused(role, "UPDATE records SET imei = '490154203237518'"));
  CHECK(refused(role, "DELETE FROM records"));
  CHECK(refused(role, "TRUNCATE records"));
  CHECK(refused(owner, "UPDATE records SET imei = '490154203237518'"));
  CHECK(refused(owner, "DELETE FROM records"));
  CHECK(refused(owner, "TRUNCATE records"));
  CHECK(owner.exec("SELECT imei FROM records").text(0, 0) == "260531793113837");
}

TEST_CASE("plain HTTP behind a proxy serves reads and refuses publishing") {
  Server s({}, true);
  CHECK(s.get("/healthz").status == 200);
  CHECK(s.get("/v1/records/47905000000000000001").status == 404);
  CHECK(s.publish(pki().record("47905000000000000005", "260531793113837").to_json(), "").status == 401);
}

TEST_CASE("core::http::Client: mutual TLS publish and read, private CA only, retry then fail when unreachable") {
  Server s;
  http::ClientOptions o;
  o.base_url = s.url;
  o.ca_file = pki().dir + "/service_ca.pem";
  o.cert_file = pki().dir + "/station.pem";
  o.key_file = pki().dir + "/station.key";
  http::Client station(o);
  auto rec = pki().record("47905000000000000100", "490154203237518");
  auto r = station.post("/v1/records", rec.to_json(), "application/json");
  CHECK(r.status == 201);
  auto g = station.get("/v1/records/47905000000000000100");  // same keep-alive session
  CHECK(g.status == 200);
  CHECK(g.header("etag") == "\"" + rec.hash() + "\"");
  CHECK(Record::from_json(g.body).hash() == rec.hash());

  // A client that trusts another CA refuses the server.
  http::ClientOptions wrong = o;
  wrong.ca_file = pki().dir + "/other_root.pem";
  wrong.cert_file.clear();
  CHECK_THROWS_AS(http::Client(wrong).get("/healthz"), IoError);
  http::ClientOptions no_ca = o;
  no_ca.ca_file.clear();
  CHECK_THROWS_AS(http::Client{no_ca}, ConfigError);

  http::ClientOptions down;
  down.base_url = "http://127.0.0.1:" + std::to_string(test::free_port());
  down.connect_attempts = 3;
  down.backoff = std::chrono::milliseconds(50);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(http::Client(down).get("/healthz"), IoError);
  CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(150));  // 50 + 100 ms of backoff
}

TEST_CASE("the program: --help, exit codes for bad flags and an unreachable database") {
  const std::string bin = test::binary_dir() + "/bin/keyline-backupdb";
  int rc = -1;
  CHECK(sh(bin + " --help", &rc).find("migrate") != std::string::npos);
  CHECK(rc == 0);
  sh(bin + " serve --db x 2>&1", &rc);  // --trust missing
  CHECK(rc == 2);
  const auto out = sh(bin + " migrate --db 'host=127.0.0.1 port=1 dbname=x connect_timeout=2' 2>&1", &rc);
  CHECK(rc == 4);
  CHECK(out.find("keyline-backupdb: error 1301") != std::string::npos);
  sh(bin + " serve --plain-http --listen 127.0.0.1:1 --db x --trust /nonexistent 2>&1", &rc);
  CHECK(rc != 0);
}

TEST_CASE("HEAD answers headers only; a refused POST body does not poison keep-alive") {
  Server s;
  auto rec = pki().record("47905000000000000200", "357805023984942");
  REQUIRE(s.publish(rec.to_json()).status == 201);
  auto h = s.get("/v1/records/47905000000000000200", "-I");
  CHECK(h.status == 200);
  CHECK(h.body.find("\"chip_id\"") == std::string::npos);  // with -I curl writes the headers there
  CHECK(h.header("etag") == "\"" + rec.hash() + "\"");
  // Two requests on one connection: a 415 (body unread), then a GET.
  const std::string f = pki().dir + "/ka.txt";
  write_file(f, rec.to_json());
  const auto out = sh("curl -s " + s.tls() + s.client("station") + " -H 'Content-Type: text/plain' --data-binary @" + f +
                      " -w ' %{http_code}\\n' '" + s.url + "/v1/records' --next " + s.tls() + " -w ' %{http_code}' '" +
                      s.url + "/v1/records/47905000000000000200'");
  CHECK(out.find("415") != std::string::npos);
  CHECK(out.substr(out.size() - 3) == "200");
}

TEST_CASE("who publishes: over real mutual TLS only a current station certificate of --station-ca") {
  Server s;
  pq::Connection owner(s.owner_conninfo);
  const auto stored = [&](const std::string& chip) {
    return owner.exec("SELECT count(*) FROM records WHERE chip_id = $1", {chip}).int64(0, 0);
  };
  // Certificates of the same service CA that are not station certificates, and one out of date.
  int n = 0;
  for (const char* who : {"kps", "server", "nopolicy", "expired", "foreign"}) {
    const std::string chip = "4790500000000000060" + std::to_string(n++);
    auto r = s.publish(pki().record(chip, Imei::from_tac_serial("35780502", 600 + n).str()).to_json(), who);
    CHECK_MESSAGE(r.status == 403, who << ": " << r.status << " " << r.body);
    CHECK(r.header("content-type") == "application/problem+json");
    CHECK(r.body.find("CN=") == std::string::npos);  // no names of the certificate on the wire
    CHECK(stored(chip) == 0);
  }
  // Without a certificate: 401.
  CHECK(s.publish(pki().record("47905000000000000610", "490154203237518").to_json(), "").status == 401);
  CHECK(stored("47905000000000000610") == 0);
  // The station certificate as keys init issues it, and the hand-made control of the expired one.
  auto ok = s.publish(pki().record("47905000000000000611", "260531793113837").to_json(), "station");
  CHECK_MESSAGE(ok.status == 201, ok.body);
  auto hand = s.publish(pki().record("47905000000000000612", "357805023984942").to_json(), "handmade");
  CHECK_MESSAGE(hand.status == 201, hand.body);
  CHECK(stored("47905000000000000611") == 1);
  CHECK(stored("47905000000000000612") == 1);
  // The station id is in the log line of every publish.
  const auto log = slurp(s.log);
  CHECK(log.find("\"route\":\"publish\",\"status\":201,") != std::string::npos);
  CHECK(log.find("station station-1") != std::string::npos);
  CHECK(log.find("station station-2") != std::string::npos);
}

TEST_CASE("422 carries a generic detail and the code; the validator's text goes to the log only") {
  Server s;
  auto bad_chain = s.publish(pki().record("47905000000000000701", "260531793113837", "", true).to_json());
  REQUIRE(bad_chain.status == 422);
  CHECK(bad_chain.body.find("the certificate chain does not verify against the device root") != std::string::npos);
  CHECK(bad_chain.body.find("\"code\":\"1212\"") != std::string::npos);
  auto a = pki().record("47905000000000000702", "260531793113837");
  auto b = pki().record("47905000000000000703", "490154203237518");
  Record wrong_imei = a;
  wrong_imei.imei = b.imei;
  auto mismatch = s.publish(wrong_imei.to_json());
  REQUIRE(mismatch.status == 422);
  CHECK(mismatch.body.find("does not match the record") != std::string::npos);
  // No certificate names, no library text, no values of the record's certificate on the wire.
  for (const auto* r : {&bad_chain, &mismatch}) {
    CHECK(r->body.find("Other") == std::string::npos);
    CHECK(r->body.find("CN=") == std::string::npos);
    CHECK(r->body.find("trusted root") == std::string::npos);
    CHECK(r->body.find("260531793113837") == std::string::npos);
  }
  const auto log = slurp(s.log);
  CHECK(log.find("chain does not lead to a trusted root") != std::string::npos);
  CHECK(log.find("certificate IMEI 260531793113837 differs") != std::string::npos);
}

TEST_CASE("rate limit: the client behind a trusted proxy, and new addresses evict the least recent, never wipe") {
  // 0.2 requests per second: a bucket spent here stays empty for the whole test.
  Server s({"--rate", "0.2", "--rate-clients", "3", "--trusted-proxy", "127.0.0.1"});
  const auto as = [&](const std::string& client) {
    return s.get("/v1/records/47905000000000000001", "-H 'X-Forwarded-For: " + client + "'").status;
  };
  CHECK(as("198.51.100.1") == 404);
  CHECK(as("198.51.100.1") == 429);
  // Another client behind the same proxy has its own bucket.
  CHECK(as("198.51.100.2") == 404);
  CHECK(as("198.51.100.1") == 429);  // most recent again
  // New addresses fill the map past its bound: the least recently used go, not client 1's bucket.
  CHECK(as("198.51.100.3") == 404);
  CHECK(as("198.51.100.1") == 429);
  CHECK(as("198.51.100.4") == 404);  // evicts .2
  CHECK(as("198.51.100.1") == 429);
  CHECK(as("198.51.100.5") == 404);  // evicts .3
  CHECK(as("198.51.100.1") == 429);
  CHECK(as("198.51.100.2") == 404);  // evicted, so a fresh bucket
  const auto log = slurp(s.log);
  CHECK(log.find("\"client\":\"198.51.100.1\",\"peer\":\"127.0.0.1\"") != std::string::npos);
}

TEST_CASE("passwords on the command line are refused with a reason") {
  const std::string bin = test::binary_dir() + "/bin/keyline-backupdb";
  int rc = -1;
  auto out = sh(bin + " migrate --db 'host=127.0.0.1 port=1 dbname=x password=hunter2' 2>&1", &rc);
  CHECK(rc == 2);
  CHECK(out.find("--db holds a password") != std::string::npos);
  out = sh(bin + " migrate --db=postgresql://u:hunter2@127.0.0.1:1/x 2>&1", &rc);
  CHECK(rc == 2);
  out = sh(bin + " migrate --db 'postgresql://u@127.0.0.1:1/x?sslmode=disable&pass%77ord=hunter2' 2>&1", &rc);
  CHECK(rc == 2);
  out = sh(bin + " migrate --db \"host=127.0.0.1 port=1 password = 'a b' dbname=x\" 2>&1", &rc);
  CHECK(rc == 2);
  // The old key in a config file is refused too, not silently dropped.
  write_file(pki().dir + "/old.toml", "[migrate]\nrole-password = \"hunter2\"\n");
  out = sh(bin + " --config " + pki().dir + "/old.toml migrate --db 'host=127.0.0.1 port=1 dbname=x' 2>&1", &rc);
  CHECK(rc == 2);
  CHECK(out.find("--role-password-file") != std::string::npos);
  // passfile names a file, not a password: accepted (and then the server is unreachable: exit 4).
  out = sh(bin + " migrate --db 'host=127.0.0.1 port=1 dbname=x passfile=/nonexistent connect_timeout=2' 2>&1", &rc);
  CHECK(rc == 4);
  out = sh(bin + " migrate --db 'host=127.0.0.1 port=1 dbname=x' --role-password hunter2 2>&1", &rc);
  CHECK(rc == 2);
  CHECK(out.find("--role-password takes a password") != std::string::npos);
  // The refusal never repeats the value (core/config_file.h refuse_secret_flags, before CLI11 parses).
  CHECK(out.find("hunter2") == std::string::npos);
  // From the environment the same conninfo is accepted (and then fails to connect: exit 4).
  out = sh("KEYLINE_BACKUPDB_DB='host=127.0.0.1 port=1 dbname=x password=hunter2 connect_timeout=2' " + bin +
               " migrate 2>&1",
           &rc);
  CHECK(rc == 4);
}

TEST_CASE("a malformed Content-Length: a problem document, counted on the operations listener") {
  Server s({}, true);
  const auto port = s.url.substr(s.url.rfind(':') + 1);
  const auto out = sh("printf 'POST /v1/records HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 12, 13\\r\\n\\r\\n' | "
                      "timeout 5 python3 -c 'import socket,sys; s=socket.create_connection((\"127.0.0.1\", " + port +
                      ")); s.sendall(sys.stdin.buffer.read()); print(s.recv(65536).decode())'");
  CHECK(out.rfind("HTTP/1.1 400", 0) == 0);
  CHECK(out.find("application/problem+json") != std::string::npos);
  auto m = s.ops("/metrics");
  CHECK(m.body.find("keyline_backupdb_malformed_requests_total{status=\"400\"} 1") != std::string::npos);
  CHECK(s.ops("/healthz").status == 200);
  CHECK(s.ops("/v1/ca").status == 404);
}

TEST_CASE("dump a sample record for manual runs" * doctest::skip()) {
  write_file("/tmp/kl-sample-record.json", pki().record("47905000000000012345", "357805023984942").to_json());
}
