// Reads on streaming replicas (backupdb/include/keyline/backupdb/read_pool.h): three local clusters,
// a primary and two hot standbys, started by this test through scripts/pg.sh (start, start-replica).
// Reads are answered by the standby (its counters and its pg_stat_activity say so), a publish is read
// back at once, a standby whose replay is paused is skipped once it lags past the bound (reads go to
// the other one in the meantime), a standby stopped in the middle of a read load costs no read, and
// the real server program serves through --replica and shows the nodes in /metrics. A standby that
// goes silent (the TCP forwarder in front of it SIGSTOPped: tests/support/tcp_forward.py) costs no
// read and no read waits past --replica-timeout-ms much; a paused standby's lag keeps growing.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "keyline/backupdb/migrate.h"
#include "keyline/backupdb/store.h"
#include "log_store.h"
#include "keyline/core/cplc.h"
#include "keyline/core/imei.h"
#include "keyline/core/pq.h"
#include "keyline/core/record.h"
#include "testenv.h"

using namespace keyline;
using namespace std::chrono_literals;

namespace {

int sh(const std::string& cmd) {
  const int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

std::string pg_script() { return test::source_dir() + "/scripts/pg.sh"; }

// The three clusters (a primary, two standbys), once per process; stopped and removed at exit.
struct Clusters {
  std::string dir, primary, replica, replica2;  // conninfo of database kl_repl, superuser
  std::string primary_dir() const { return dir + "/primary"; }
  std::string replica_dir() const { return dir + "/replica"; }
  std::string replica2_dir() const { return dir + "/replica2"; }

  Clusters() {
    char tmpl[] = "/tmp/kl-replica-test.XXXXXX";
    dir = mkdtemp(tmpl);
    REQUIRE(sh(pg_script() + " start " + primary_dir() + " >/dev/null") == 0);
    const auto admin = test::read_file(primary_dir() + "/conninfo");
    core::pq::Connection(admin).exec("CREATE DATABASE kl_repl");
    primary = with_db(admin);
    backupdb::Config cfg;
    cfg.db = primary;
    backupdb::migrate(cfg);
    REQUIRE(sh(pg_script() + " start-replica " + primary_dir() + " " + replica_dir() + " >/dev/null") == 0);
    replica = with_db(test::read_file(replica_dir() + "/conninfo"));
    REQUIRE(sh(pg_script() + " start-replica " + primary_dir() + " " + replica2_dir() + " >/dev/null") == 0);
    replica2 = with_db(test::read_file(replica2_dir() + "/conninfo"));
  }
  ~Clusters() {
    for (const auto& d : {replica_dir(), replica2_dir(), primary_dir()}) {
      sh(pg_script() + " stop " + d + " >/dev/null 2>&1");
      std::error_code ec;
      const auto data = std::filesystem::read_symlink(d + "/data", ec);
      if (!ec) std::filesystem::remove_all(data, ec);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  static std::string with_db(std::string conninfo) {
    const auto at = conninfo.find("dbname=postgres");
    REQUIRE(at != std::string::npos);
    return conninfo.replace(at, 15, "dbname=kl_repl");
  }
  void start_replica() const { REQUIRE(sh(pg_script() + " start-replica " + primary_dir() + " " + replica_dir() + " >/dev/null") == 0); }
  void stop_replica() const { REQUIRE(sh(pg_script() + " stop " + replica_dir() + " >/dev/null") == 0); }
};

Clusters& clusters() {
  static Clusters c;
  return c;
}

// Checks every 100 ms, skipped beyond 300 ms behind; one standby, or both.
backupdb::ReplicaSettings settings(bool both = false) {
  backupdb::ReplicaSettings s;
  s.conninfos = {clusters().replica};
  if (both) s.conninfos.push_back(clusters().replica2);
  s.max_lag_ms = 300;
  s.check_ms = 100;
  return s;
}

core::Record record_of(int n) {
  char chip[24];
  std::snprintf(chip, sizeof chip, "E%019X", n);
  core::Record r;
  r.chip_id = core::ChipId::parse(chip);
  r.imei = core::Imei::from_tac_serial("86100000", static_cast<std::uint32_t>(n));
  r.backup = core::Bytes{0x4b, 0x4c, static_cast<std::uint8_t>(n)};
  r.certificates = {core::Bytes{0x30, 0x00}};
  return r;
}

backupdb::NodeStats node(backupdb::Store& s, const std::string& name) {
  for (const auto& n : s.reads().stats())
    if (n.name == name) return n;
  FAIL("no node " << name);
  return {};
}

bool wait_for(const std::function<bool()>& cond, std::chrono::milliseconds limit = 10s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return cond();
}

// Waits until the standbys have replayed everything the primary has written so far.
void wait_replayed(const std::vector<std::string>& standbys) {
  core::pq::Connection p(clusters().primary);
  const auto lsn = p.exec("SELECT pg_current_wal_lsn()::text").text(0, 0);
  for (const auto& conninfo : standbys) {
    core::pq::Connection r(conninfo);
    REQUIRE(wait_for([&] { return r.exec("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", {lsn}).text(0, 0) == "t"; }));
  }
}
void wait_replayed() { wait_replayed({clusters().replica}); }

void publish_range(backupdb::Store& store, int from, int to) {
  for (int i = from; i < to; ++i) {
    const auto rec = record_of(i);
    REQUIRE(store.publish(rec, rec.hash()).outcome == backupdb::PublishOutcome::Created);
  }
}

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

// A conninfo without its password (serve refuses one on the command line), the password to `file`.
std::string without_password(std::string conninfo, const std::string& file) {
  const auto at = conninfo.find(" password=");
  REQUIRE(at != std::string::npos);
  const auto end = conninfo.find(' ', at + 1);
  std::ofstream(file) << conninfo.substr(at + 10, end - at - 10) << "\n";
  return conninfo.erase(at, end - at);
}

// keyline-backupdb serve --plain-http --no-log over the primary and the replica; killed by its PID.
struct Server {
  pid_t pid = -1;
  int port = test::free_port(), ops_port = test::free_port();
  std::string log = clusters().dir + "/serve.log";

  // `replica`: its conninfo (by default the standby's own), `extra`: more serve options.
  explicit Server(std::string replica = clusters().replica, const std::vector<std::string>& extra = {}) {
    const auto& c = clusters();
    REQUIRE(sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=kl-root -days 2 -keyout " +
               c.dir + "/root.key -out " + c.dir + "/root.pem 2>/dev/null") == 0);
    std::vector<std::string> args{test::binary_dir() + "/bin/keyline-backupdb", "serve", "--plain-http", "--no-log",
                                  "--db", without_password(c.primary, c.dir + "/db.pw"), "--db-password-file", c.dir + "/db.pw",
                                  "--replica", without_password(replica, c.dir + "/db.pw"), "--max-replica-lag-ms", "500",
                                  "--cache", "0", "--trust", c.dir + "/root.pem", "--log", log,
                                  "--listen", "127.0.0.1:" + std::to_string(port),
                                  "--ops-listen", "127.0.0.1:" + std::to_string(ops_port)};
    args.insert(args.end(), extra.begin(), extra.end());
    pid = fork();
    if (pid == 0) {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      if (!freopen((log + ".out").c_str(), "w", stdout) || !freopen((log + ".out").c_str(), "a", stderr)) _exit(127);
      execv(argv[0], argv.data());
      _exit(127);
    }
    REQUIRE(wait_for([this] { return status("/healthz", ops_port) == "200"; }));
  }
  ~Server() {
    kill(pid, SIGTERM);
    int st = 0;
    waitpid(pid, &st, 0);
  }
  std::string status(const std::string& path, int on) const {
    return run("curl -s -o /dev/null -w '%{http_code}' 'http://127.0.0.1:" + std::to_string(on) + path + "'");
  }
  std::string metrics() const { return run("curl -s 'http://127.0.0.1:" + std::to_string(ops_port) + "/metrics'"); }
  std::string healthz() const { return run("curl -s 'http://127.0.0.1:" + std::to_string(ops_port) + "/healthz'"); }
};

// The value of one series in a Prometheus text, -1 when it is not there.
double series(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  return -1;
}

// tests/support/tcp_forward.py from a free port to `target_port`; SIGSTOP it to make the target silent.
struct Forwarder {
  pid_t pid = -1;
  int port = test::free_port();

  explicit Forwarder(int target_port) {
    const std::string script = test::source_dir() + "/tests/support/tcp_forward.py";
    const std::string lp = std::to_string(port), tp = std::to_string(target_port);
    pid = fork();
    if (pid == 0) {
      execlp("python3", "python3", script.c_str(), lp.c_str(), tp.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    REQUIRE(pid > 0);
    REQUIRE(wait_for([this] { return sh("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", " +
                                        std::to_string(port) + "), 1)' 2>/dev/null") == 0; }));
  }
  ~Forwarder() {
    kill(pid, SIGCONT);
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
  }
  // `conninfo` with its port replaced by the forwarder's.
  std::string in_front_of(std::string conninfo) const {
    const auto at = conninfo.find(" port=");
    REQUIRE(at != std::string::npos);
    const auto end = conninfo.find(' ', at + 1);
    return conninfo.replace(at, end - at, " port=" + std::to_string(port));
  }
};

}  // namespace

TEST_CASE("reads are answered by the replica; a publish is read back at once (a miss goes to the primary)") {
  backupdb::Store store(clusters().primary, 8, 0, settings());  // no cache: every read reaches a database
  CHECK(node(store, "replica0").state == backupdb::NodeState::Up);
  for (int i = 0; i < 30; ++i) {
    const auto rec = record_of(i);
    REQUIRE(store.publish(rec, rec.hash()).outcome == backupdb::PublishOutcome::Created);
    // Right after the commit: the replica may not have replayed it yet, the answer is never a 404.
    const auto back = store.by_chip_id(rec.chip_id.str());
    REQUIRE(static_cast<bool>(back));
    CHECK(back->record_hash == rec.hash());
  }
  wait_replayed();
  const auto before = store.reads().stats();
  for (int i = 0; i < 30; ++i) {
    REQUIRE(static_cast<bool>(store.by_chip_id(record_of(i).chip_id.str())));
    REQUIRE(static_cast<bool>(store.by_imei(record_of(i).imei.str())));
  }
  const auto after = store.reads().stats();
  CHECK(after[1].reads - before[1].reads == 60);  // replica0
  CHECK(after[0].reads == before[0].reads);       // the primary took none of them
  CHECK_FALSE(static_cast<bool>(store.by_chip_id("EFFFFFFFFFFFFFFFFFFF")));  // absent: the replica's "no" is checked on the primary
  CHECK(store.reads().stats()[0].reads == before[0].reads + 1);
  core::pq::Connection r(clusters().replica);
  CHECK(r.exec("SELECT count(*) FROM pg_stat_activity WHERE datname = 'kl_repl' AND query LIKE 'SELECT r.chip_id%'")
            .int64(0, 0) >= 1);
}

TEST_CASE("a standby whose replay is paused is skipped once it lags past the bound: reads go to the other") {
  backupdb::Store store(clusters().primary, 8, 0, settings(true));
  publish_range(store, 100, 110);
  wait_replayed({clusters().replica, clusters().replica2});
  for (int i = 100; i < 110; ++i) REQUIRE(static_cast<bool>(store.by_chip_id(record_of(i).chip_id.str())));
  CHECK(node(store, "replica0").reads == 5);  // in turn
  CHECK(node(store, "replica1").reads == 5);
  core::pq::Connection r(clusters().replica);
  r.exec("SELECT pg_wal_replay_pause()");
  publish_range(store, 110, 111);  // new WAL replica0 does not replay
  REQUIRE(wait_for([&] { return node(store, "replica0").state == backupdb::NodeState::Lagging; }, 5s));
  CHECK(node(store, "replica0").lag_seconds > 0.3);
  CHECK(node(store, "replica1").state == backupdb::NodeState::Up);
  wait_replayed({clusters().replica2});  // replica1 has record 110 too
  const auto primary = node(store, "primary").reads;
  for (int i = 100; i < 111; ++i) REQUIRE(static_cast<bool>(store.by_chip_id(record_of(i).chip_id.str())));
  CHECK(node(store, "replica0").reads == 5);
  CHECK(node(store, "replica1").reads == 5 + 11);
  CHECK(node(store, "primary").reads == primary);
  r.exec("SELECT pg_wal_replay_resume()");
  REQUIRE(wait_for([&] { return node(store, "replica0").state == backupdb::NodeState::Up; }, 5s));
  for (int i = 0; i < 4; ++i) REQUIRE(static_cast<bool>(store.by_chip_id(record_of(110).chip_id.str())));
  CHECK(node(store, "replica0").reads == 5 + 2);
}

TEST_CASE("log tiles come from the standby when it has them, else from the primary; the checkpoint from the primary") {
  auto lax = settings();
  lax.max_lag_ms = 60000;  // the paused standby stays in use, so its misses show
  backupdb::Store store(clusters().primary, 4, 0, lax);
  backupdb::LogReader log(clusters().primary, 2, 0, &store.reads());  // no tile cache: every read reaches a node
  core::pq::Connection p(clusters().primary);
  const auto add_tile = [&](const std::string& path, std::uint8_t fill) {
    p.exec("INSERT INTO log_tiles (path, data) VALUES ($1, $2)", {path, core::Bytes(32, fill)});
  };
  add_tile("tile/0/000.p/1", 1);
  wait_replayed();
  const auto replica = node(store, "replica0").reads;
  const auto primary = node(store, "primary").reads;
  const auto a = log.tile("tile/0/000.p/1");
  REQUIRE(a != nullptr);
  CHECK(a->data == core::Bytes(32, 1));
  CHECK(node(store, "replica0").reads == replica + 1);
  CHECK(node(store, "primary").reads == primary);
  core::pq::Connection r(clusters().replica);
  r.exec("SELECT pg_wal_replay_pause()");
  add_tile("tile/0/000.p/2", 2);
  p.exec("INSERT INTO log_checkpoints (tree_size, root, note) VALUES (2, $1, 'kl-test\n2\n')", {core::Bytes(32, 7)});
  const auto b = log.tile("tile/0/000.p/2");  // the standby lacks it: asked again of the primary
  REQUIRE(b != nullptr);
  CHECK(b->data == core::Bytes(32, 2));
  CHECK(node(store, "replica0").misses >= 1);
  CHECK(node(store, "primary").reads == primary + 1);
  const auto cp = log.latest();  // the primary's, though the standby has not replayed it
  REQUIRE(cp.has_value());
  CHECK(cp->size == 2);
  r.exec("SELECT pg_wal_replay_resume()");
}

TEST_CASE("the replica stopped in the middle of a read load: no read fails; it takes reads again once back") {
  backupdb::Store store(clusters().primary, 8, 0, settings());
  publish_range(store, 200, 240);
  wait_replayed();
  std::atomic<bool> stop{false};
  std::atomic<long> reads{0}, failed{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 6; ++t) {
    readers.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        try {
          const auto rec = record_of(200 + (i * 7 + t) % 40);
          const bool ok = (i % 2) ? static_cast<bool>(store.by_chip_id(rec.chip_id.str()))
                                  : static_cast<bool>(store.by_imei(rec.imei.str()));
          if (!ok) ++failed;
        } catch (const std::exception&) {
          ++failed;
        }
        ++reads;
      }
    });
  }
  std::this_thread::sleep_for(700ms);
  const auto on_replica = node(store, "replica0").reads;
  CHECK(on_replica > 0);
  clusters().stop_replica();  // fast shutdown: its sessions end under the readers
  std::this_thread::sleep_for(700ms);
  const auto replica_after_stop = node(store, "replica0");
  stop = true;
  for (auto& th : readers) th.join();
  CHECK(failed == 0);
  CHECK(replica_after_stop.state == backupdb::NodeState::Down);
  MESSAGE(reads.load() << " reads, " << replica_after_stop.failures << " failed over from the replica");
  clusters().start_replica();
  REQUIRE(wait_for([&] { return node(store, "replica0").state == backupdb::NodeState::Up; }));
  const auto back = node(store, "replica0").reads;
  REQUIRE(static_cast<bool>(store.by_chip_id(record_of(201).chip_id.str())));
  CHECK(node(store, "replica0").reads == back + 1);
}

TEST_CASE("serve --replica: the server program reads on the replica and shows each node in /metrics and /healthz") {
  {
    backupdb::Store store(clusters().primary, 2, 0);
    publish_range(store, 300, 310);
  }
  wait_replayed();
  Server srv;
  for (int i = 300; i < 310; ++i) CHECK(srv.status("/v1/records/" + record_of(i).chip_id.str(), srv.port) == "200");
  CHECK(srv.status("/v1/imei/" + record_of(305).imei.str(), srv.port) == "200");
  CHECK(srv.status("/v1/records/EFFFFFFFFFFFFFFFFFFE", srv.port) == "404");
  auto m = srv.metrics();
  CHECK(series(m, "keyline_backupdb_db_reads_total{node=\"replica0\"}") == 11);
  CHECK(series(m, "keyline_backupdb_db_reads_total{node=\"primary\"}") == 1);  // the 404, asked again
  CHECK(series(m, "keyline_backupdb_db_read_misses_total{node=\"replica0\"}") == 1);
  CHECK(series(m, "keyline_backupdb_db_replica_state{node=\"replica0\",state=\"up\"}") == 1);
  auto h = srv.healthz();
  CHECK(h.find("{\"status\":\"ok\",\"nodes\":[{\"node\":\"primary\",\"state\":\"up\"},"
               "{\"node\":\"replica0\",\"state\":\"up\",\"lag_seconds\":") == 0);
  // The replica goes away under the server: reads go on from the primary, the node shows down.
  clusters().stop_replica();
  for (int i = 300; i < 310; ++i) CHECK(srv.status("/v1/records/" + record_of(i).chip_id.str(), srv.port) == "200");
  m = srv.metrics();
  CHECK(series(m, "keyline_backupdb_db_reads_total{node=\"primary\"}") >= 10);
  CHECK(series(m, "keyline_backupdb_db_replica_state{node=\"replica0\",state=\"down\"}") == 1);
  // The primary still takes the writes and the reads: healthy, degraded, the replica shown down.
  CHECK(srv.status("/healthz", srv.ops_port) == "200");
  CHECK(srv.status("/healthz", srv.port) == "200");  // the public listener's is the same
  h = srv.healthz();
  CHECK(h == "{\"status\":\"degraded\",\"nodes\":[{\"node\":\"primary\",\"state\":\"up\"},"
             "{\"node\":\"replica0\",\"state\":\"down\"}]}");
  clusters().start_replica();  // back for whatever runs after
  REQUIRE(wait_for([&] { return srv.healthz().find("\"status\":\"ok\"") != std::string::npos; }));
}

TEST_CASE("a replica gone silent (its forwarder SIGSTOPped) under 16 readers: no read fails or hangs; down at once, back after SIGCONT") {
  const int replica_port = std::stoi(test::read_file(clusters().replica_dir() + "/port"));
  Forwarder fwd(replica_port);
  auto s = settings();
  s.conninfos = {fwd.in_front_of(clusters().replica)};
  s.timeout_ms = 300;
  // Lookups one by one, and batched (a pipeline of statements, or one with ANY($1), per round trip).
  std::size_t batch = 1;
  int base = 400;
  SUBCASE("one lookup a round trip") {}
  SUBCASE("--read-batch 8") {
    batch = 8;
    base = 700;
  }
  backupdb::Store store(clusters().primary, 8, 0, s, batch);
  publish_range(store, base, base + 40);
  wait_replayed();
  REQUIRE(node(store, "replica0").state == backupdb::NodeState::Up);
  using Clock = std::chrono::steady_clock;
  std::atomic<bool> stop{false};
  std::atomic<long> reads{0}, failed{0}, slowest_us{0}, running{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 16; ++t) {
    readers.emplace_back([&, t] {
      ++running;
      for (int i = 0; !stop; ++i) {
        const auto start = Clock::now();
        try {
          const auto rec = record_of(base + (i * 7 + t) % 40);
          const bool ok = (i % 2) ? static_cast<bool>(store.by_chip_id(rec.chip_id.str()))
                                  : static_cast<bool>(store.by_imei(rec.imei.str()));
          if (!ok) ++failed;
        } catch (const std::exception&) {
          ++failed;
        }
        const long us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
        for (long m = slowest_us; us > m && !slowest_us.compare_exchange_weak(m, us);) {
        }
        ++reads;
      }
      --running;
    });
  }
  std::this_thread::sleep_for(500ms);
  CHECK(node(store, "replica0").reads > 0);
  REQUIRE(kill(fwd.pid, SIGSTOP) == 0);
  const auto stopped = Clock::now();
  // What /healthz and /metrics show (api.cpp renders stats()): down within about a second.
  const bool down = wait_for([&] { return node(store, "replica0").state == backupdb::NodeState::Down; }, 3s);
  const auto down_after = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - stopped);
  CHECK(down);
  CHECK(down_after < 1200ms);
  const long reads_at_down = reads;
  std::this_thread::sleep_for(1000ms);  // the primary answers meanwhile
  const long during = reads - reads_at_down;
  CHECK(during > 100);
  CHECK(node(store, "replica0").state == backupdb::NodeState::Down);  // the checker does not see it up
  REQUIRE(kill(fwd.pid, SIGCONT) == 0);  // before any join: without the fix the readers hang until now
  CHECK(wait_for([&] { return node(store, "replica0").state == backupdb::NodeState::Up; }, 5s));
  const auto back = node(store, "replica0").reads;
  CHECK(wait_for([&] { return node(store, "replica0").reads > back + 10; }, 3s));  // it takes reads again
  stop = true;
  CHECK(wait_for([&] { return running == 0; }, 10s));
  for (auto& th : readers) th.join();
  CHECK(failed == 0);
  MESSAGE("read batch " << batch << ": " << reads.load() << " reads, " << during << " in the second after the stop, down after " << down_after.count()
                       << " ms, slowest read " << slowest_us.load() / 1000 << " ms, "
                       << node(store, "replica0").failures << " failed over from the replica");
  CHECK(slowest_us < (s.timeout_ms + 1000) * 1000L);
}

TEST_CASE("a standby whose replay stays paused: its lag keeps growing past the samples' window (max lag + 2 s)") {
  backupdb::Store store(clusters().primary, 4, 0, settings());
  core::pq::Connection r(clusters().replica);
  r.exec("SELECT pg_wal_replay_pause()");
  publish_range(store, 500, 501);
  // Before the fix the oldest sample was dropped 2.3 s after it was taken, so the figure stopped there.
  const bool grew = wait_for([&] { return node(store, "replica0").lag_seconds > 3.5; }, 6s);
  const auto lag = node(store, "replica0").lag_seconds;
  r.exec("SELECT pg_wal_replay_resume()");
  CHECK(grew);
  MESSAGE("lag seen " << lag << " s");
  CHECK(node(store, "replica0").state == backupdb::NodeState::Lagging);
}

TEST_CASE("serve: a replica gone silent under 40 reads in flight: every read answers, both /healthz answer and show it down") {
  const int replica_port = std::stoi(test::read_file(clusters().replica_dir() + "/port"));
  Forwarder fwd(replica_port);
  {
    backupdb::Store store(clusters().primary, 2, 0);
    publish_range(store, 600, 640);
  }
  wait_replayed();
  Server srv(fwd.in_front_of(clusters().replica), {"--threads", "16", "--db-pool", "8", "--replica-timeout-ms", "400"});
  CHECK(srv.status("/v1/records/" + record_of(600).chip_id.str(), srv.port) == "200");
  REQUIRE(srv.healthz().find("\"status\":\"ok\"") != std::string::npos);
  REQUIRE(kill(fwd.pid, SIGSTOP) == 0);
  // 40 reads at once, more than the server's 16 workers; each curl gives up after 5 s (the hang before).
  std::string urls;
  for (int i = 0; i < 40; ++i)
    urls += " http://127.0.0.1:" + std::to_string(srv.port) + "/v1/records/" + record_of(600 + i).chip_id.str();
  const std::string out = clusters().dir + "/silent.out";
  const std::string load = "for u in" + urls + "; do curl -s -m 5 -o /dev/null -w '%{http_code} %{time_total}\\n' $u & done; wait";
  std::thread readers([&] { sh("(" + load + ") > " + out); });
  std::this_thread::sleep_for(200ms);
  const auto t0 = std::chrono::steady_clock::now();
  // -m 5: without the fix both hung until the SIGCONT below, which comes after them.
  const auto pub = run("curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:" + std::to_string(srv.port) + "/healthz");
  const auto ops = run("curl -s -m 5 http://127.0.0.1:" + std::to_string(srv.ops_port) + "/healthz");
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  readers.join();
  kill(fwd.pid, SIGCONT);
  CHECK(pub == "200");
  CHECK(ops.find("{\"node\":\"replica0\",\"state\":\"down\"}") != std::string::npos);
  CHECK(took < 2000ms);
  std::istringstream lines(test::read_file(out));
  int answered = 0;
  double slowest = 0;
  std::string code;
  double secs = 0;
  while (lines >> code >> secs) {
    CHECK(code == "200");
    answered += code == "200";
    slowest = std::max(slowest, secs);
  }
  CHECK(answered == 40);
  CHECK(slowest < 2.0);
  MESSAGE("40 reads in flight: " << answered << " answered 200, slowest " << slowest << " s; /healthz both in "
                                 << took.count() << " ms: " << ops);
  REQUIRE(wait_for([&] { return srv.healthz().find("\"status\":\"ok\"") != std::string::npos; }));
}
