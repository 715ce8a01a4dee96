// libpq wrapper against the real PostgreSQL fixture cluster.
#include <doctest/doctest.h>

#include <atomic>
#include <thread>

#include "keyline/core/pq.h"
#include "keyline/core/pq_group.h"
#include "testenv.h"

using namespace keyline::core;
using keyline::test::pg_env;

namespace {
pq::Connection fresh_db(const char* prefix) { return pq::Connection(pg_env().create_database(prefix)); }
}  // namespace

TEST_CASE("parameterized insert and select round trip, bytea and injection text stored verbatim") {
  auto c = fresh_db("pq_rt");
  c.exec("CREATE TABLE t (id bigint PRIMARY KEY, name text, data bytea)");
  Bytes big(64 * 1024);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::uint8_t>(i * 7 + 3);
  big[10] = 0;  // embedded NUL must survive the binary parameter
  const std::string evil = "x'); DROP TABLE t; --\\ \"";
  CHECK(c.exec("INSERT INTO t VALUES ($1, $2, $3)", {std::int64_t{1}, evil, big}).affected() == 1);
  c.exec("INSERT INTO t VALUES ($1, $2, $3)", {2, pq::Param::null(), Bytes{}});
  auto r = c.exec("SELECT id, name, data FROM t WHERE id = $1", {1});
  REQUIRE(r.rows() == 1);
  CHECK(r.int64(0, 0) == 1);
  CHECK(r.text(0, 1) == evil);
  CHECK(r.bytea(0, 2) == big);
  auto r2 = c.exec("SELECT name, data FROM t WHERE id = $1", {2});
  CHECK(r2.is_null(0, 0));
  CHECK(r2.bytea(0, 1).empty());
  CHECK(c.exec("SELECT count(*) FROM t").int64(0, 0) == 2);
}

TEST_CASE("unique violation is DbUniqueViolation with SQLSTATE 23505") {
  auto c = fresh_db("pq_uv");
  c.exec("CREATE TABLE u (k text UNIQUE)");
  c.exec("INSERT INTO u VALUES ($1)", {"a"});
  try {
    c.exec("INSERT INTO u VALUES ($1)", {"a"});
    FAIL("no error");
  } catch (const DbError& e) {
    CHECK(e.code() == ErrorCode::DbUniqueViolation);
    CHECK(e.sqlstate() == "23505");
  }
  try {
    c.exec("SELECT * FROM no_such_table");
    FAIL("no error");
  } catch (const DbError& e) {
    CHECK(e.code() == ErrorCode::Db);
    CHECK(e.sqlstate() == "42P01");
  }
}

TEST_CASE("transaction rollback in destructor, commit persists") {
  auto c = fresh_db("pq_tx");
  c.exec("CREATE TABLE t (v int)");
  {
    pq::Transaction tx(c);
    tx.exec("INSERT INTO t VALUES (1)");
  }
  CHECK(c.exec("SELECT count(*) FROM t").int64(0, 0) == 0);
  {
    pq::Transaction tx(c, pq::Isolation::Serializable);
    tx.exec("INSERT INTO t VALUES (1)");
    tx.commit();
  }
  CHECK(c.exec("SELECT count(*) FROM t").int64(0, 0) == 1);
}

TEST_CASE("serialization failure is retried until it commits") {
  const std::string db = pg_env().create_database("pq_ser");
  pq::Connection setup(db);
  setup.exec("CREATE TABLE acc (id int PRIMARY KEY, n int)");
  setup.exec("INSERT INTO acc VALUES (1, 0)");
  // Two serializable writers of the same row: one of them must get 40001 and retry.
  std::atomic<int> attempts{0};
  auto worker = [&] {
    pq::Connection c(db);
    for (int i = 0; i < 20; ++i) {
      pq::run_transaction(c, pq::Isolation::Serializable, [&](pq::Transaction& tx) {
        ++attempts;
        const auto n = tx.exec("SELECT n FROM acc WHERE id = 1").int64(0, 0);
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        tx.exec("UPDATE acc SET n = $1 WHERE id = 1", {n + 1});
      }, pq::RetryPolicy{50, std::chrono::milliseconds(1)});
    }
  };
  std::thread a(worker), b(worker);
  a.join();
  b.join();
  CHECK(setup.exec("SELECT n FROM acc WHERE id = 1").int64(0, 0) == 40);
  CHECK(attempts.load() > 40);  // at least one retry happened
}

TEST_CASE("serialization failure surfaces as DbSerialization without retry") {
  const std::string db = pg_env().create_database("pq_ser1");
  pq::Connection a(db), b(db);
  a.exec("CREATE TABLE acc (id int PRIMARY KEY, n int)");
  a.exec("INSERT INTO acc VALUES (1, 0)");
  pq::Transaction ta(a, pq::Isolation::RepeatableRead);
  pq::Transaction tb(b, pq::Isolation::RepeatableRead);
  ta.exec("SELECT n FROM acc");
  tb.exec("SELECT n FROM acc");
  ta.exec("UPDATE acc SET n = 1 WHERE id = 1");
  ta.commit();
  try {
    tb.exec("UPDATE acc SET n = 2 WHERE id = 1");
    FAIL("no error");
  } catch (const DbError& e) {
    CHECK(e.code() == ErrorCode::DbSerialization);
    CHECK(e.sqlstate() == "40001");
  }
}

TEST_CASE("reconnect after pg_terminate_backend") {
  const std::string db = pg_env().create_database("pq_term");
  pq::Connection c(db), admin(db);
  c.exec("CREATE TABLE t (v int)");
  const int pid = c.backend_pid();
  admin.exec("SELECT pg_terminate_backend($1)", {pid});
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  try {
    c.exec("SELECT 1");
    FAIL("no error");
  } catch (const DbError& e) {
    CHECK(e.code() == ErrorCode::DbConnection);
  }
  // run_transaction reconnects and re-runs the work.
  admin.exec("SELECT pg_terminate_backend($1)", {c.ok() ? c.backend_pid() : pid});
  int runs = 0;
  pq::run_transaction(c, pq::Isolation::ReadCommitted, [&](pq::Transaction& tx) {
    ++runs;
    tx.exec("INSERT INTO t VALUES (1)");
  });
  CHECK(c.ok());
  CHECK(c.backend_pid() != pid);
  CHECK(c.exec("SELECT count(*) FROM t").int64(0, 0) == 1);

  // The pool replaces a connection whose backend was killed.
  pq::Pool pool(db, 2);
  int first_pid = 0;
  {
    auto l = pool.acquire();
    first_pid = l->backend_pid();
  }
  admin.exec("SELECT pg_terminate_backend($1)", {first_pid});
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  {
    auto l = pool.acquire();
    pq::run_transaction(*l, pq::Isolation::ReadCommitted, [](pq::Transaction& tx) { tx.exec("SELECT 1"); });
    CHECK(l->backend_pid() != first_pid);
  }
}

TEST_CASE("prepared statements: parsed once per session, same parameters and errors, re-prepared after reconnect") {
  const std::string db = pg_env().create_database("pq_prep");
  pq::Connection c(db), admin(db);
  c.exec("CREATE TABLE p (k text PRIMARY KEY, data bytea)");
  const std::string insert = "INSERT INTO p VALUES ($1, $2) RETURNING k";
  const std::string evil = "z'); DROP TABLE p; --";
  CHECK(c.exec_prepared(insert, {"a", Bytes{0, 1, 2}}).text(0, 0) == "a");
  CHECK(c.exec_prepared(insert, {evil, Bytes{}}).text(0, 0) == evil);
  // One server-side statement for the text, however often it runs.
  CHECK(c.exec("SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", {insert}).int64(0, 0) == 1);
  try {
    c.exec_prepared(insert, {"a", Bytes{9}});
    FAIL("no error");
  } catch (const DbError& e) {
    CHECK(e.code() == ErrorCode::DbUniqueViolation);
  }
  CHECK(c.exec_prepared("SELECT data FROM p WHERE k = $1", {"a"}).bytea(0, 0) == Bytes{0, 1, 2});
  // A new session has no statements: the wrapper prepares again after a reconnect.
  admin.exec("SELECT pg_terminate_backend($1)", {c.backend_pid()});
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_THROWS_AS(c.exec_prepared(insert, {"b", Bytes{}}), DbError);
  c.reconnect();
  CHECK(c.exec_prepared(insert, {"b", Bytes{}}).text(0, 0) == "b");
  CHECK(c.exec("SELECT count(*) FROM p").int64(0, 0) == 3);
}

TEST_CASE("pipeline: one transaction for the batch, results in order, all or nothing on a failure") {
  const std::string db = pg_env().create_database("pq_pipe");
  pq::Connection c(db), other(db);
  c.exec("CREATE TABLE q (k text PRIMARY KEY, n int)");
  const pq::Statement a{"INSERT INTO q VALUES ($1, $2) RETURNING k", {"a", 1}};
  const pq::Statement b{"INSERT INTO q VALUES ($1, $2) RETURNING k", {"b", 2}};
  const pq::Statement txid{"SELECT txid_current()", {}};
  const auto r = c.exec_pipeline({&a, &txid, &b, &txid});
  REQUIRE(r.size() == 4);
  CHECK(r[0].text(0, 0) == "a");
  CHECK(r[2].text(0, 0) == "b");
  CHECK(r[1].int64(0, 0) == r[3].int64(0, 0));  // one transaction, not one per statement
  CHECK(other.exec("SELECT count(*) FROM q").int64(0, 0) == 2);

  // The third statement repeats a key: it fails, the fourth is skipped and the first rolls back.
  const pq::Statement c1{"INSERT INTO q VALUES ($1, $2) RETURNING k", {"c", 3}};
  const pq::Statement d1{"INSERT INTO q VALUES ($1, $2) RETURNING k", {"d", 4}};
  try {
    c.exec_pipeline({&c1, &txid, &a, &d1});
    FAIL("no error");
  } catch (const DbError& e) {
    CHECK(e.code() == ErrorCode::DbUniqueViolation);
    CHECK(e.sqlstate() == "23505");
  }
  CHECK(other.exec("SELECT string_agg(k, ',' ORDER BY k) FROM q").text(0, 0) == "a,b");
  // The session left pipeline mode clean: ordinary statements and a new pipeline work on it.
  CHECK(c.exec("SELECT count(*) FROM q").int64(0, 0) == 2);
  CHECK(c.exec_pipeline({&c1, &d1}).size() == 2);
  CHECK(other.exec("SELECT string_agg(k, ',' ORDER BY k) FROM q").text(0, 0) == "a,b,c,d");

  // A session that died under the pipeline: DbConnection, and the connection is usable again after a
  // reconnect (the Pool does that on its next lease).
  other.exec("SELECT pg_terminate_backend($1)", {c.backend_pid()});
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const pq::Statement e1{"INSERT INTO q VALUES ($1, $2) RETURNING k", {"e", 5}};
  try {
    c.exec_pipeline({&e1, &txid});
    FAIL("no error");
  } catch (const DbError& e) {
    CHECK(e.code() == ErrorCode::DbConnection);
  }
  CHECK_FALSE(c.ok());
  c.reconnect();
  CHECK(c.exec_pipeline({&e1, &txid})[0].text(0, 0) == "e");
  CHECK(other.exec("SELECT count(*) FROM q").int64(0, 0) == 5);
}

TEST_CASE("group commit: statements of many threads share commits, one thread's error is its own") {
  const std::string db = pg_env().create_database("pq_group");
  pq::Connection admin(db);
  admin.exec("CREATE TABLE g (k text PRIMARY KEY, t bigint)");
  admin.exec("INSERT INTO g VALUES ('taken', 0)");
  pq::Pool pool(db, 4);
  pq::GroupCommit group(pool, 1, 32);
  constexpr int kThreads = 16, kEach = 40;
  std::atomic<int> ok{0}, refused{0}, other_error{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        // Thread 0 tries the taken key now and then: its statement fails, the others' must not.
        const std::string key = (t == 0 && i % 10 == 5) ? "taken" : std::to_string(t) + "-" + std::to_string(i);
        try {
          const auto r = group.exec("INSERT INTO g VALUES ($1, txid_current()) RETURNING k", {key});
          CHECK(r.text(0, 0) == key);
          ++ok;
        } catch (const DbError& e) {
          (e.code() == ErrorCode::DbUniqueViolation && key == "taken" ? refused : other_error)++;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(refused.load() == kEach / 10);
  CHECK(other_error.load() == 0);
  CHECK(ok.load() == kThreads * kEach - kEach / 10);
  CHECK(admin.exec("SELECT count(*) FROM g").int64(0, 0) == 1 + ok.load());
  const auto stats = group.stats();
  CHECK(stats.statements == static_cast<std::uint64_t>(kThreads * kEach));
  // One flusher for 16 threads: statements queue up while it is out and leave together. The
  // transactions the rows name agree with the counter.
  const auto txs = admin.exec("SELECT count(DISTINCT t) FROM g WHERE k <> 'taken'").int64(0, 0);
  CHECK(stats.batches < stats.statements);
  CHECK(txs < ok.load());
}

TEST_CASE("unreachable server is DbConnection") {
  try {
    pq::Connection c("host=127.0.0.1 port=1 dbname=x connect_timeout=2");
    FAIL("connected");
  } catch (const DbError& e) {
    CHECK(e.code() == ErrorCode::DbConnection);
  }
}
