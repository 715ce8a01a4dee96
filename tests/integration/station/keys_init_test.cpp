// `keyline-station keys init` / `keys server-cert` (docs/station.md "Keys") run as the operator runs them,
// each test on a fresh SoftHSM token of its own (scripts/hsm.sh in a private directory), so they never
// race the fixture token that integration_station and integration_line initialise.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "keyline/core/cert_profile.h"
#include "keyline/core/chip_identity.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"
#include "keyline/station/publisher.h"
#include "station_auth.h"
#include "testenv.h"

using namespace keyline;
namespace fs = std::filesystem;

namespace {

struct Run {
  int status = -1;  // exit status
  std::string out;
};

Run run(const std::string& cmd) {
  Run r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A token of its own and a PKI directory; removed at the end.
struct Station {
  fs::path dir;
  std::string label;
  std::string station_id = "line-2.st_a";
  fs::path pki_dir;  // --pki-dir: dir/pki unless a test moves it

  Station() {
    static std::atomic<int> n{0};
    label = "keys-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
    dir = fs::path(test::testenv_dir()) / label;
    const auto r = run(test::source_dir() + "/scripts/hsm.sh init " + dir.string() + " " + label);
    INFO(r.out);
    REQUIRE(r.status == 0);
    pki_dir = dir / "pki";
  }
  ~Station() {
    run("chown -R root " + dir.string());  // a test may have handed part of it to nobody
    fs::remove_all(dir);
  }

  fs::path pki(const char* file = "") const { return pki_dir / file; }
  std::string env() const { return "env SOFTHSM2_CONF=" + (dir / "softhsm2.conf").string() + " "; }
  std::string pin() const { return test::read_file((dir / "user.pin").string()); }

  std::string command(const std::string& args, const std::string& prefix = "") const {
    return prefix + env() + test::binary_dir() + "/bin/keyline-station --token " + label + " --pin-file " +
           (dir / "user.pin").string() + " --pki-dir " + pki_dir.string() + " --station-id " + station_id + " " + args;
  }
  Run station(const std::string& args, const std::string& prefix = "") const { return run(command(args, prefix)); }

  // pkcs11-tool's object listing, one block per object ("Private Key Object; EC" ... indented lines).
  std::vector<std::string> objects() const {
    const auto r = run(env() + "pkcs11-tool --module " + test::hsm_env().module + " --token-label " + label +
                       " --login --pin " + pin() + " -O");
    REQUIRE(r.status == 0);
    std::vector<std::string> blocks;
    std::size_t pos = 0;
    while (pos < r.out.size()) {
      std::size_t eol = r.out.find('\n', pos);
      if (eol == std::string::npos) eol = r.out.size();
      const std::string line = r.out.substr(pos, eol - pos);
      if (line.rfind("Private Key Object", 0) == 0 || line.rfind("Public Key Object", 0) == 0 ||
          line.rfind("Secret Key Object", 0) == 0)
        blocks.emplace_back();
      if (!blocks.empty() && line.rfind("warning", 0) != 0) blocks.back() += line + "\n";
      pos = eol + 1;
    }
    return blocks;
  }

  std::vector<std::string> objects_labelled(const std::string& kind, const std::string& l) const {
    std::vector<std::string> out;
    for (const auto& b : objects())
      if (b.rfind(kind, 0) == 0 && b.find("label:      " + l + "\n") != std::string::npos) out.push_back(b);
    return out;
  }

  void delete_object(const std::string& type, const std::string& l) const {
    const auto r = run(env() + "pkcs11-tool --module " + test::hsm_env().module + " --token-label " + label +
                       " --login --pin " + pin() + " --delete-object --type " + type + " --label " + l);
    INFO(r.out);
    REQUIRE(r.status == 0);
  }
};

Botan::X509_Certificate first_cert(const fs::path& p) { return core::load_certificates_pem(p.string()).at(0); }

std::map<std::string, std::string> pki_contents(const Station& s) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::directory_iterator(s.pki())) m[e.path().filename().string()] = slurp(e.path());
  return m;
}

const char* const kKeyFiles[] = {"backupdb-tls.key", "kps-tls.key"};
const char* const kAllFiles[] = {"root.pem",         "device-ca.pem",    "service-ca.pem", "tls-ca.pem",
                                 "station-tls.pem",  "backupdb-tls.pem", "backupdb-tls.key", "kps-tls.pem",
                                 "kps-tls.key"};

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

}  // namespace

TEST_CASE("keys init interrupted after the keys (certificate files lost) is finished by running it again") {
  Station s;
  auto r = s.station("keys init");
  INFO(r.out);
  REQUIRE(r.status == 0);
  const auto ca_before = first_cert(s.pki("device-ca.pem"));
  const auto ca_point = s.objects_labelled("Public Key Object", "keyline-device-ca");
  REQUIRE(ca_point.size() == 1);
  for (const char* f : {"device-ca.pem", "station-tls.pem", "kps-tls.key", "tls-ca.pem"}) fs::remove(s.pki(f));
  // A run killed between temp file and rename leaves one behind (0600, maybe a key): it goes.
  std::ofstream(s.pki("kps-tls.key.tmp-a1B2c3")) << "half a key";
  // What every other command says meanwhile, and what it said before this fix: keys init refused.
  r = s.station("keys init");
  INFO(r.out);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("reused keyline-device-ca") != std::string::npos);
  CHECK(r.out.find("generated") == std::string::npos);
  for (const char* f : kAllFiles) CHECK(fs::exists(s.pki(f)));
  const auto ca_after = first_cert(s.pki("device-ca.pem"));
  CHECK(ca_after.subject_public_key_info() == ca_before.subject_public_key_info());  // the same Device CA key
  CHECK(s.objects_labelled("Public Key Object", "keyline-device-ca") == ca_point);
  CHECK(s.objects_labelled("Private Key Object", "keyline-device-ca").size() == 1);
  CHECK_FALSE(fs::exists(s.pki("kps-tls.key.tmp-a1B2c3")));
  CHECK(r.out.find("removed " + s.pki("kps-tls.key.tmp-a1B2c3").string()) != std::string::npos);
  const auto root = first_cert(s.pki("root.pem"));
  const auto svc = first_cert(s.pki("service-ca.pem"));
  CHECK_NOTHROW(core::verify_chain(ca_after, {}, {root}));
  CHECK_NOTHROW(core::verify_chain(first_cert(s.pki("station-tls.pem")), {svc}, {root}));
  CHECK(slurp(s.pki("tls-ca.pem")) == core::to_pem(svc) + core::to_pem(root));
}

TEST_CASE("a token that holds only some of the keys: they are reused, the rest generated") {
  Station s;
  REQUIRE(s.station("keys init").status == 0);
  const auto ca_before = first_cert(s.pki("device-ca.pem"));
  // As if init had died after the first three key pairs: later keys and every file gone.
  for (const char* type : {"privkey", "pubkey"}) s.delete_object(type, "keyline-station-tls");
  s.delete_object("secrkey", "keyline-master");
  s.delete_object("secrkey", "keyline-wrap");
  fs::remove_all(s.pki());
  const auto r = s.station("keys init");
  INFO(r.out);
  REQUIRE(r.status == 0);
  for (const char* l : {"keyline-root", "keyline-device-ca", "keyline-service-ca"})
    CHECK(r.out.find(std::string("reused ") + l) != std::string::npos);
  for (const char* l : {"keyline-station-tls", "keyline-master", "keyline-wrap"})
    CHECK(r.out.find(std::string("generated ") + l) != std::string::npos);
  CHECK(first_cert(s.pki("device-ca.pem")).subject_public_key_info() == ca_before.subject_public_key_info());
  for (const char* f : kAllFiles) CHECK(fs::exists(s.pki(f)));
  // Half a key pair is not guessed at: named, refused, nothing generated under that label.
  s.delete_object("privkey", "keyline-station-tls");
  const auto half = s.station("keys init");
  CHECK(half.status != 0);
  CHECK(half.out.find("keyline-station-tls") != std::string::npos);
  CHECK(s.objects_labelled("Public Key Object", "keyline-station-tls").size() == 1);
}

TEST_CASE("a completed init run again says everything is present and changes nothing") {
  Station s;
  REQUIRE(s.station("keys init").status == 0);
  const auto before = pki_contents(s);
  const auto objects = s.objects().size();
  const auto r = s.station("keys init");
  INFO(r.out);
  CHECK(r.status == 0);
  CHECK(r.out.find("nothing changed") != std::string::npos);
  CHECK(r.out.find("wrote") == std::string::npos);
  CHECK(pki_contents(s) == before);
  CHECK(s.objects().size() == objects);
}

TEST_CASE("key files are 0600 from the first byte, also under umask 0; a key file opened wider is replaced") {
  Station s;
  const auto trace = s.dir / "trace.txt";
  const auto r = s.station("keys init", "umask 0; strace -f -qq -e trace=open,openat,creat -o " + trace.string() + " ");
  INFO(r.out);
  REQUIRE(r.status == 0);
  for (const char* f : kKeyFiles) CHECK(mode_of(s.pki(f)) == 0600);
  for (const char* f : {"root.pem", "station-tls.pem", "kps-tls.pem"}) CHECK(mode_of(s.pki(f)) == 0644);
  // Every file the run created in the PKI directory (temp files included) was created 0600.
  const std::string t = slurp(trace);
  const std::regex create("\"" + s.pki().string() + "/?([^\"]*)\", [^)]*O_CREAT[^)]*, (0[0-7]+)\\)");
  int created = 0;
  for (std::sregex_iterator it(t.begin(), t.end(), create), end; it != end; ++it) {
    INFO((*it)[1].str());
    CHECK((*it)[2].str() == "0600");
    ++created;
  }
  CHECK(created >= 9);
  for (const auto& e : fs::directory_iterator(s.pki())) CHECK(e.path().filename().string().find(".tmp") == std::string::npos);
  // A key file someone made group- or world-readable may have leaked: a new key, not a chmod.
  const auto old_key = slurp(s.pki("kps-tls.key"));
  fs::permissions(s.pki("kps-tls.key"), fs::perms(0644));
  const auto again = s.station("keys init");
  INFO(again.out);
  CHECK(again.status == 0);
  CHECK(mode_of(s.pki("kps-tls.key")) == 0600);
  CHECK(slurp(s.pki("kps-tls.key")) != old_key);
}

TEST_CASE("--dns and --ip end up in the server certificates; bad names are refused before anything changes") {
  Station s;
  auto r = s.station("keys init --dns backupdb.line-2.example --ip 10.20.30.40");
  INFO(r.out);
  REQUIRE(r.status == 0);
  for (const char* f : {"backupdb-tls.pem", "kps-tls.pem"}) {
    const auto alt = first_cert(s.pki(f)).subject_alt_name();
    CHECK(alt.get_attribute("DNS") == std::vector<std::string>{"backupdb.line-2.example"});
    CHECK(alt.get_attribute("IP") == std::vector<std::string>{"10.20.30.40"});
  }
  const auto before = pki_contents(s);
  for (const char* bad : {"--dns bad_name.example", "--dns -x.example", "--ip 10.1.2", "--ip ::1", "--ip 300.1.1.1"}) {
    CAPTURE(bad);
    r = s.station(std::string("keys server-cert ") + bad);
    CHECK(r.status == 2);
    CHECK(pki_contents(s) == before);
  }
  // New names for a completed set: `keys server-cert` re-issues both server certificates, nothing else.
  r = s.station("keys server-cert --dns kps.example --dns db.example --ip 192.0.2.7");
  INFO(r.out);
  REQUIRE(r.status == 0);
  const auto after = pki_contents(s);
  for (const char* f : {"root.pem", "device-ca.pem", "service-ca.pem", "station-tls.pem"}) CHECK(after.at(f) == before.at(f));
  CHECK(after.at("kps-tls.key") != before.at("kps-tls.key"));
  const auto alt = first_cert(s.pki("kps-tls.pem")).subject_alt_name();
  CHECK(alt.get_attribute("DNS") == std::vector<std::string>{"kps.example", "db.example"});
  CHECK(alt.get_attribute("IP") == std::vector<std::string>{"192.0.2.7"});
  // Defaults when no name is given.
  Station d;
  REQUIRE(d.station("keys init").status == 0);
  const auto def = first_cert(d.pki("backupdb-tls.pem")).subject_alt_name();
  CHECK(def.get_attribute("DNS") == std::vector<std::string>{"localhost"});
  CHECK(def.get_attribute("IP") == std::vector<std::string>{"127.0.0.1"});
}

TEST_CASE("the station certificate passes StationAuthority; the server certificates do not") {
  Station s;
  REQUIRE(s.station("keys init").status == 0);
  const backupdb::StationAuthority auth({first_cert(s.pki("service-ca.pem"))});
  const auto now = std::chrono::system_clock::now();
  const auto st = auth.check(first_cert(s.pki("station-tls.pem")).BER_encode(), now);
  CHECK(st.allowed);
  CHECK(st.station_id == "line-2.st_a");
  for (const char* f : {"backupdb-tls.pem", "kps-tls.pem"}) {
    CAPTURE(f);
    const auto c = first_cert(s.pki(f));
    CHECK_FALSE(auth.check(c.BER_encode(), now).allowed);
    CHECK(c.extended_key_usage() == std::vector<Botan::OID>{Botan::OID("1.3.6.1.5.5.7.3.1")});
  }
  // A new station id gets a new station certificate on the next init; the old one stays valid until it
  // lapses (there is no revocation), so the id is the certificate's, not the configuration's.
  s.station_id = "line-3";
  const auto r = s.station("keys init");
  INFO(r.out);
  CHECK(r.status == 0);
  CHECK(auth.check(first_cert(s.pki("station-tls.pem")).BER_encode(), now).station_id == "line-3");
}

TEST_CASE("after keys init every token key has exactly its role's usage, and none is extractable") {
  Station s;
  REQUIRE(s.station("keys init").status == 0);
  auto usage = [](const std::string& block) {
    const auto u = block.find("Usage:");
    if (u == std::string::npos) return std::string("?");
    std::string line = block.substr(u + 6, block.find('\n', u) - u - 6);
    return line.erase(0, line.find_first_not_of(' '));
  };
  for (const char* l : {"keyline-root", "keyline-device-ca", "keyline-service-ca", "keyline-station-tls"}) {
    CAPTURE(l);
    const auto priv = s.objects_labelled("Private Key Object", l);
    const auto pub = s.objects_labelled("Public Key Object", l);
    REQUIRE(priv.size() == 1);
    REQUIRE(pub.size() == 1);
    CHECK(usage(priv[0]) == "sign");
    CHECK(usage(pub[0]) == "verify");
    CHECK(priv[0].find("never extractable") != std::string::npos);
  }
  const auto wrap = s.objects_labelled("Secret Key Object", "keyline-wrap");
  REQUIRE(wrap.size() == 1);
  CHECK(usage(wrap[0]) == "encrypt, decrypt");  // C_Encrypt/C_Decrypt with AES-GCM; never C_WrapKey
  const auto master = s.objects_labelled("Secret Key Object", "keyline-master");
  REQUIRE(master.size() == 1);
  CHECK(usage(master[0]).find("wrap") == std::string::npos);
  CHECK(usage(master[0]).find("encrypt") == std::string::npos);
  for (const auto& b : {wrap[0], master[0]}) CHECK(b.find("never extractable") != std::string::npos);
}

TEST_CASE("a reused key made with wider usage (SoftHSM's defaults) is named in a warning") {
  Station s;
  // keyline-wrap as a template without usages gets it from SoftHSM: wrap and unwrap too.
  const auto made = run(s.env() + "pkcs11-tool --module " + test::hsm_env().module + " --token-label " + s.label +
                        " --login --pin " + s.pin() + " --keygen --key-type AES:32 --label keyline-wrap --sensitive");
  INFO(made.out);
  REQUIRE(made.status == 0);
  const auto r = s.station("keys init");
  INFO(r.out);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("reused keyline-wrap") != std::string::npos);
  CHECK(r.out.find("warning: keyline-wrap on the token also allows") != std::string::npos);
  CHECK(r.out.find("wrap, unwrap") != std::string::npos);
  // The keys this init made itself allow their role only: no warning for them on the next run.
  const auto again = s.station("keys init");
  CHECK(again.out.find("warning: keyline-device-ca") == std::string::npos);
  CHECK(again.out.find("warning: keyline-master") == std::string::npos);
}

namespace {

constexpr auto npos = std::string::npos;

// The station's view of a Station, for the library calls that read the PKI directory in this process.
station::StationConfig config_of(const Station& s) {
  station::StationConfig c;
  c.hsm_module = test::hsm_env().module;  // before TokenEnv: hsm_env() exports the fixture's SOFTHSM2_CONF
  c.token_label = s.label;
  c.pin_file = (s.dir / "user.pin").string();
  c.pki_dir = s.pki_dir.string();
  c.station_id = s.station_id;
  return c;
}

// SOFTHSM2_CONF pointed at a Station's token while a check opens it in this process.
struct TokenEnv {
  std::string saved;
  explicit TokenEnv(const Station& s) {
    if (const char* v = std::getenv("SOFTHSM2_CONF")) saved = v;
    ::setenv("SOFTHSM2_CONF", (s.dir / "softhsm2.conf").c_str(), 1);
  }
  ~TokenEnv() { ::setenv("SOFTHSM2_CONF", saved.c_str(), 1); }
};

// The keyline error code `f` throws; 0 when it returns, -1 for anything else.
int error_of(const std::function<void()>& f) {
  try {
    f();
    return 0;
  } catch (const core::Error& e) {
    INFO(e.what());
    return e.numeric();
  } catch (const std::exception& e) {
    INFO(e.what());
    return -1;
  }
}

// Where the station reads its PKI directory: opening its keys, tls-ca.pem and station-tls.pem for
// publishing (the paths line.cpp and publisher.cpp pass to OpenSSL). When only tls-ca.pem is at
// fault (whole_dir false), only what reads it.
void check_station_refuses(const Station& s, bool whole_dir = true) {
  const auto cfg = config_of(s);
  const TokenEnv env(s);
  CHECK(error_of([&] { station::pki_path(cfg, station::pki_file::tls_trust); }) == 4032);
  if (whole_dir) {
    CHECK(error_of([&] { station::StationKeys::open(cfg, 1); }) == 4032);
    CHECK(error_of([&] { station::pki_path(cfg, station::pki_file::station_tls); }) == 4032);
  } else {
    CHECK(error_of([&] { station::pki_path(cfg, station::pki_file::station_tls); }) == 0);
  }
  auto publishing = cfg;
  publishing.backupdb_url = "https://127.0.0.1:9";
  CHECK(error_of([&] { station::Publisher p(publishing); }) == 4032);
}

void check_refused(const Run& r, const std::string& what) {
  INFO(r.out);
  CHECK(r.status == 2);
  CHECK(r.out.find("error 4032") != npos);
  CHECK(r.out.find(what) != npos);
}

// Exactly one object of each kind under each label keys init makes.
void check_one_set(const Station& s) {
  for (const std::string l : {"keyline-root", "keyline-device-ca", "keyline-service-ca", "keyline-station-tls"}) {
    CAPTURE(l);
    CHECK(s.objects_labelled("Private Key Object", l).size() == 1);
    CHECK(s.objects_labelled("Public Key Object", l).size() == 1);
  }
  for (const std::string l : {"keyline-master", "keyline-wrap"}) {
    CAPTURE(l);
    CHECK(s.objects_labelled("Secret Key Object", l).size() == 1);
  }
}

uid_t nobody() {
  const passwd* pw = ::getpwnam("nobody");
  REQUIRE(pw != nullptr);
  return pw->pw_uid;
}

}  // namespace

TEST_CASE("keys init under umask 0 makes the PKI directory and its missing parents 0700") {
  Station s;
  s.pki_dir = s.dir / "site" / "pki";
  const auto r = s.station("keys init", "umask 0; ");
  INFO(r.out);
  REQUIRE(r.status == 0);
  CHECK(mode_of(s.pki_dir) == 0700);
  CHECK(mode_of(s.dir / "site") == 0700);
  CHECK(mode_of(s.pki(".keys.lock")) == 0600);
  for (const char* f : {"root.pem", "tls-ca.pem"}) CHECK(mode_of(s.pki(f)) == 0644);
}

TEST_CASE("a PKI directory that group or others can write is refused: nothing is written or trusted") {
  Station s;
  fs::create_directory(s.pki_dir);
  fs::permissions(s.pki_dir, fs::perms(0770));
  auto r = s.station("keys init");
  check_refused(r, s.pki_dir.string() + " is writable by group or others");
  CHECK(fs::is_empty(s.pki_dir));
  CHECK(s.objects().empty());  // refused before the token is touched
  // A complete set whose directory was opened up later: neither keys command nor the station uses it.
  fs::permissions(s.pki_dir, fs::perms(0700));
  r = s.station("keys init");
  INFO(r.out);
  REQUIRE(r.status == 0);
  const auto before = pki_contents(s);
  for (const int loose : {0720, 0702}) {
    CAPTURE(loose);
    fs::permissions(s.pki_dir, fs::perms(loose));
    check_refused(s.station("keys init"), "is writable by group or others");
    check_refused(s.station("keys server-cert"), "is writable by group or others");
    CHECK(pki_contents(s) == before);
    check_station_refuses(s);
  }
  fs::permissions(s.pki_dir, fs::perms(0700));
  // A directory above it that others can write lets them swap the whole PKI directory; a sticky one
  // (as /tmp) does not: there only the owner renames or removes an entry (unlink(2), EPERM).
  fs::permissions(s.dir, fs::perms(0777));
  check_refused(s.station("keys init"), s.dir.string() + " is writable by group or others");
  check_station_refuses(s);
  fs::permissions(s.dir, fs::perms(01777));
  r = s.station("keys init");
  CHECK(r.status == 0);
  CHECK(r.out.find("nothing changed") != npos);
  fs::permissions(s.dir, fs::perms(0755));
  // One file others can write: the trust anchors for publishing could be anyone's.
  fs::permissions(s.pki("tls-ca.pem"), fs::perms(0666));
  check_refused(s.station("keys init"), s.pki("tls-ca.pem").string() + " is writable by group or others");
  check_station_refuses(s, false);
  CHECK(pki_contents(s) == before);
}

TEST_CASE("a PKI directory or file another user owns, or a file that is a symbolic link, is refused") {
  Station s;
  auto r = s.station("keys init");
  INFO(r.out);
  REQUIRE(r.status == 0);
  const auto before = pki_contents(s);
  REQUIRE(::chown(s.pki_dir.c_str(), nobody(), static_cast<gid_t>(-1)) == 0);
  check_refused(s.station("keys init"), s.pki_dir.string() + " is owned by uid " + std::to_string(nobody()));
  check_refused(s.station("keys server-cert"), "is owned by uid");
  check_station_refuses(s);
  REQUIRE(::chown(s.pki_dir.c_str(), 0, static_cast<gid_t>(-1)) == 0);
  CHECK(pki_contents(s) == before);

  REQUIRE(::chown(s.pki("device-ca.pem").c_str(), nobody(), static_cast<gid_t>(-1)) == 0);
  check_refused(s.station("keys init"), s.pki("device-ca.pem").string() + " is owned by uid");
  {
    const auto cfg = config_of(s);
    const TokenEnv env(s);
    CHECK(error_of([&] { station::StationKeys::open(cfg, 1); }) == 4032);
  }
  REQUIRE(::chown(s.pki("device-ca.pem").c_str(), 0, static_cast<gid_t>(-1)) == 0);

  // --pki-dir naming a link in a sticky directory: whoever owns the link can point it elsewhere.
  fs::permissions(s.dir, fs::perms(01777));
  fs::create_directory_symlink(s.pki_dir, s.dir / "pki-link");
  REQUIRE(::lchown((s.dir / "pki-link").c_str(), nobody(), static_cast<gid_t>(-1)) == 0);
  const auto real_dir = s.pki_dir;
  s.pki_dir = s.dir / "pki-link";
  check_refused(s.station("keys init"), s.pki_dir.string() + " is owned by uid " + std::to_string(nobody()));
  check_station_refuses(s);
  REQUIRE(::lchown((s.dir / "pki-link").c_str(), 0, static_cast<gid_t>(-1)) == 0);
  r = s.station("keys init");  // the same link, root's: fine
  CHECK(r.status == 0);
  CHECK(r.out.find("nothing changed") != npos);
  s.pki_dir = real_dir;
  fs::permissions(s.dir, fs::perms(0755));

  // tls-ca.pem as a link to a copy elsewhere: what it names can change without the PKI directory changing.
  fs::copy_file(s.pki("tls-ca.pem"), s.dir / "elsewhere.pem");
  fs::remove(s.pki("tls-ca.pem"));
  fs::create_symlink(s.dir / "elsewhere.pem", s.pki("tls-ca.pem"));
  check_refused(s.station("keys init"), s.pki("tls-ca.pem").string() + " is a symbolic link");
  check_station_refuses(s, false);
  CHECK(fs::is_symlink(s.pki("tls-ca.pem")));
}

TEST_CASE("keys init waits while another keys run holds the PKI directory's lock") {
  Station s;
  fs::create_directory(s.pki_dir);
  fs::permissions(s.pki_dir, fs::perms(0700));
  const int fd = ::open(s.pki(".keys.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::flock(fd, LOCK_EX) == 0);
  const auto out = s.dir / "bg.out", rc = s.dir / "bg.rc";
  run("( " + s.command("keys init") + " > " + out.string() + " 2>&1; echo $? > " + rc.string() + ".t; mv " +
      rc.string() + ".t " + rc.string() + " ) > /dev/null 2>&1 &");
  bool waiting = false;
  for (int i = 0; i < 100 && !waiting && !fs::exists(rc); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    waiting = slurp(out).find("keys: waiting for") != npos;
  }
  INFO(slurp(out));
  CHECK(waiting);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  CHECK_FALSE(fs::exists(rc));
  CHECK(s.objects().empty());  // nothing made while the other run holds the directory
  ::close(fd);
  for (int i = 0; i < 1200 && !fs::exists(rc); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  REQUIRE(fs::exists(rc));
  CHECK(test::read_file(rc.string()) == "0");
  check_one_set(s);
}

TEST_CASE("concurrent keys init runs on a fresh token make exactly one set of keys, and all succeed") {
  Station s;
  constexpr int kRuns = 4;
  std::string cmd;
  for (int i = 0; i < kRuns; ++i) {
    const auto n = std::to_string(i);
    cmd += "( " + s.command("keys init") + " > " + (s.dir / ("out." + n)).string() + " 2>&1; echo $? > " +
           (s.dir / ("rc." + n)).string() + " ) & ";
  }
  run(cmd + "wait");
  for (int i = 0; i < kRuns; ++i) {
    const auto n = std::to_string(i);
    INFO(slurp(s.dir / ("out." + n)));
    CHECK(test::read_file((s.dir / ("rc." + n)).string()) == "0");
  }
  check_one_set(s);
  const auto again = s.station("keys init");
  INFO(again.out);
  CHECK(again.status == 0);
  CHECK(again.out.find("nothing changed") != npos);
}

// Issue #15: the station's SCP11a OCE key and certificate (docs/station.md, "The channel").
TEST_CASE("keys init makes the OCE key (derive only) and an OCE certificate from the Device CA, kept when run again") {
  Station s;
  REQUIRE(s.station("keys init").status == 0);
  const auto priv = s.objects_labelled("Private Key Object", "station-oce");
  REQUIRE(priv.size() == 1);
  CHECK(priv[0].find("Usage:      derive\n") != npos);
  CHECK(priv[0].find("never extractable") != npos);
  const auto oce = first_cert(s.pki("oce.pem"));
  const auto ca = first_cert(s.pki("device-ca.pem"));
  CHECK(oce.issuer_dn() == ca.subject_dn());
  CHECK(oce.verify_signature(*ca.subject_public_key()) == Botan::Certificate_Status_Code::VERIFIED);
  CHECK_FALSE(oce.is_CA_cert());
  CHECK(oce.constraints() == Botan::KEY_AGREEMENT);  // it can sign nothing, not even as a TLS client
  REQUIRE(oce.certificate_policy_oids().size() == 1);
  CHECK(oce.certificate_policy_oids()[0] == Botan::OID(core::chip::kOcePolicyOid));
  CHECK(oce.subject_dn().get_first_attribute("X520.CommonName") == s.station_id);
  CHECK(oce.not_after() <= ca.not_after());
  const std::string issued = slurp(s.pki("oce.pem"));
  REQUIRE(s.station("keys init").status == 0);
  CHECK(slurp(s.pki("oce.pem")) == issued);

  const auto cfg = config_of(s);  // before TokenEnv (config_of reads the fixture's environment)
  TokenEnv env(s);
  {
    auto keys = station::StationKeys::open(cfg, 1);
    REQUIRE(keys.oce_chain.size() == 2);  // what PSO sends: Device CA certificate, OCE certificate
    CHECK(keys.oce_chain[0] == ca.BER_encode());
    CHECK(keys.oce_chain[1] == oce.BER_encode());
  }
  // A certificate for another key in oce.pem (the station's TLS one) is not sent, and keys init re-issues.
  const auto tls = first_cert(s.pki("station-tls.pem"));
  std::ofstream(s.pki("oce.pem"), std::ios::trunc) << core::to_pem(tls);
  CHECK(station::StationKeys::open(cfg, 1).oce_chain.empty());
  const auto again = s.station("keys init");
  CHECK(again.out.find("oce.pem") != npos);
  CHECK(first_cert(s.pki("oce.pem")).subject_public_key_info() == oce.subject_public_key_info());
  CHECK(station::StationKeys::open(cfg, 1).oce_chain.size() == 2);
}
