// The log's monitor and witness end to end (docs/transparency.md, "Monitor" and "Witness"): the real
// `keyline-backupdb serve` on the fixture PostgreSQL cluster with its log key on a SoftHSM token of
// its own, HTTPS, and the real `monitor`, `witness` and `witness-push` programs. Records from two
// stations at once; the monitor follows the whole run, resuming; a record swapped by SQL as the
// database superuser is found; the witness cosigns the log and refuses a second tree under the same
// key (a fork). The fixture part (PKI, database, server) is tlog_test.cpp's, copied.
#include "tlog_fixture.h"

#include "keyline/core/tlog_cosignature.h"
#include "keyline/recovery/errors.h"
#include "keyline/recovery/log_check.h"
#include "keyline/recovery/recovery.h"

namespace {




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
// the 10,000 run through tlog_test.cpp's many-records case; here the monitor's work.
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
