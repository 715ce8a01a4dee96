// A small libpq wrapper: RAII connections and results, PQexecParams only (text parameters, binary for
// bytea), RAII transactions, retry on serialization failure and lost connections, and a connection pool.
// Every statement goes through PQexecParams with $n placeholders, so no value is ever spliced into SQL.
// A session may carry a deadline (set_deadline, Pool::try_acquire): its statements then run through
// PQsendQuery* and poll() instead of blocking for ever on a server that went silent.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "keyline/core/bytes.h"
#include "keyline/core/error.h"

struct pg_conn;
struct pg_result;

namespace keyline::core::pq {

using Deadline = std::chrono::steady_clock::time_point;

// One statement parameter: text (sent as format 0), bytea (sent as format 1, raw bytes) or NULL.
class Param {
 public:
  Param(std::string text) : m_value(std::move(text)) {}  // NOLINT: implicit on purpose
  Param(const char* text) : m_value(std::string(text)) {}  // NOLINT
  Param(std::int64_t v) : m_value(std::to_string(v)) {}    // NOLINT
  Param(int v) : m_value(std::to_string(v)) {}             // NOLINT
  Param(const Bytes& b) : m_value(std::string(b.begin(), b.end())), m_binary(true) {}  // NOLINT
  static Param null() { return Param(); }

  bool is_null() const noexcept { return !m_value.has_value(); }
  bool binary() const noexcept { return m_binary; }
  const std::string& value() const { return *m_value; }

 private:
  Param() = default;
  std::optional<std::string> m_value;
  bool m_binary = false;
};
using Params = std::vector<Param>;

// One statement of a pipeline: SQL text with $n placeholders (prepared as by exec_prepared) and its
// parameters.
struct Statement {
  std::string sql;
  Params params;
};

// Owns a PGresult. Results are in text format; bytea columns are decoded from PostgreSQL's hex form.
class Result {
 public:
  Result() = default;
  explicit Result(pg_result* r) : m_res(r) {}
  Result(Result&& o) noexcept : m_res(o.m_res) { o.m_res = nullptr; }
  Result& operator=(Result&& o) noexcept;
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;
  ~Result();

  int rows() const;
  int columns() const;
  bool is_null(int row, int col) const;
  std::string text(int row, int col) const;         // "" for NULL
  std::int64_t int64(int row, int col) const;       // throws DbError(Db) when not an integer
  Bytes bytea(int row, int col) const;              // decodes "\x..." hex output
  long affected() const;                            // PQcmdTuples as a number (0 when none)
  bool empty() const { return rows() == 0; }
  pg_result* raw() const { return m_res; }

 private:
  pg_result* m_res = nullptr;
};

// One connection. Not thread-safe: one thread at a time (the Pool hands them out).
class Connection {
 public:
  // Throws DbError(DbConnection) when the server cannot be reached or refuses the login.
  explicit Connection(std::string conninfo);
  // The same, given up at `deadline` (PQconnectStart/PQconnectPoll): a server whose kernel accepts
  // the TCP connection but whose process never answers (SIGSTOPped, a wedged forwarder) would hold
  // PQconnectdb for ever. Throws DbError(Timeout) then. The session keeps the deadline (set_deadline).
  Connection(std::string conninfo, Deadline deadline);
  Connection(Connection&&) noexcept;
  Connection& operator=(Connection&&) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  // Runs one statement through PQexecParams. Throws DbError: DbUniqueViolation (23505),
  // DbSerialization (40001, 40P01), DbConnection (class 08, 57P01-57P03 or a dropped socket), Db otherwise.
  Result exec(const std::string& sql, const Params& params = {});
  // The same for a statement a program runs over and over: prepared once per session (PQprepare,
  // same $n parameters), then PQexecPrepared. PostgreSQL parses and plans it once instead of on
  // every call, which on the line was a third of the database's CPU per device. `sql` must be a
  // fixed text: each distinct text becomes one more statement kept for the session.
  Result exec_prepared(const std::string& sql, const Params& params = {});
  // Runs the statements, each prepared as by exec_prepared, as one pipeline with a single Sync
  // (libpq pipeline mode, PostgreSQL 15 manual 34.5). Outside BEGIN, the server runs everything up
  // to a Sync as one implicit transaction (manual 55.2.4), so N statements cost one round trip and
  // one durable commit. All or nothing: when a statement fails the rest are skipped, the whole batch
  // rolls back and that statement's DbError is thrown. Returns one result per statement, in order.
  std::vector<Result> exec_pipeline(const std::vector<const Statement*>& batch);
  bool ok() const;   // the socket is up as far as libpq knows
  // PQreset; throws DbError(DbConnection) when it fails. With a deadline set: a new session opened
  // within it instead (DbError(Timeout) past it).
  void reconnect();
  // Every statement from now on (exec, exec_prepared, exec_pipeline, and the PQprepare behind them)
  // waits for its answer until `deadline` at most. Past it the statement is cancelled (PQcancel, on
  // a thread of its own: it blocks on a silent server too), the session is closed, so ok() is false
  // and a Pool drops it instead of handing it out again, and DbError(Timeout) is thrown. A keepalive
  // or tcp_user_timeout cannot tell: a stopped process's kernel still ACKs. std::nullopt: no limit.
  void set_deadline(std::optional<Deadline> deadline);
  std::optional<Deadline> deadline() const { return m_deadline; }
  int backend_pid() const;
  pg_conn* raw() { return m_conn; }

 private:
  Result run(const std::string& sql, const Params& params, bool prepared);
  const std::string& prepared_name(const std::string& sql, std::size_t n_params);
  Result checked(Result res);
  DbError error_of(pg_result* r);
  // Deadline mode: sends what libpq has queued and waits until a result can be read without blocking.
  void wait_ready();
  pg_result* next_result();  // PQgetResult, after wait_ready when a deadline is set
  [[noreturn]] void time_out(const char* what);  // cancel, close, throw DbError(Timeout)

  std::string m_conninfo;
  pg_conn* m_conn = nullptr;
  std::optional<Deadline> m_deadline;
  std::unordered_map<std::string, std::string> m_prepared;  // SQL text -> statement name
};

enum class Isolation { ReadCommitted, RepeatableRead, Serializable };

// BEGIN on construction; rolls back in the destructor unless commit() ran.
class Transaction {
 public:
  explicit Transaction(Connection& conn, Isolation iso = Isolation::ReadCommitted);
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction();

  Result exec(const std::string& sql, const Params& params = {}) { return m_conn.exec(sql, params); }
  void commit();
  void rollback();
  bool open() const { return m_open; }  // neither committed nor rolled back yet
  Connection& connection() { return m_conn; }

 private:
  Connection& m_conn;
  bool m_open = true;
};

struct RetryPolicy {
  int attempts = 5;
  std::chrono::milliseconds backoff{20};  // doubled after each failed attempt
};

// Runs `attempt`, and again after a pause (policy.backoff, doubled each time) while it throws
// DbSerialization or DbConnection, at most policy.attempts times in all; `before_retry` runs after the
// pause, before the next attempt (a reconnect, say). Any other error, or the last one, is rethrown.
void retry_transient(const RetryPolicy& policy, const std::function<void()>& attempt,
                     const std::function<void(const DbError&)>& before_retry = {});

// Runs work inside a transaction, retrying the whole transaction on DbSerialization, and on
// DbConnection after reconnecting. Work must therefore be idempotent with respect to anything outside
// the database (it is re-run from the start). The last error is rethrown after the final attempt.
// Work returning COMMITS whatever it wrote, unless it ended the transaction itself: to undo its writes
// without throwing, work calls tx.rollback() and returns (a throw rolls back too).
void run_transaction(Connection& conn, Isolation iso, const std::function<void(Transaction&)>& work,
                     RetryPolicy policy = {});

// A fixed-size pool for a server: connections open lazily, a lease returns its connection on
// destruction, acquire() waits when all are out. A connection that comes back bad (lost, or closed
// after a deadline) is dropped, and a new one opened on a later acquire.
class Pool {
 public:
  class Lease {
   public:
    Lease(Pool& pool, std::unique_ptr<Connection> c) : m_pool(&pool), m_conn(std::move(c)) {}
    Lease(Lease&& o) noexcept : m_pool(o.m_pool), m_conn(std::move(o.m_conn)) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease();
    Connection& operator*() { return *m_conn; }
    Connection* operator->() { return m_conn.get(); }

   private:
    Pool* m_pool;
    std::unique_ptr<Connection> m_conn;
  };

  Pool(std::string conninfo, std::size_t size);
  Lease acquire();
  // A session within `deadline`: std::nullopt when none came free by then (the pool is busy, not
  // broken); a new one is opened within the deadline (DbError(Timeout) past it, DbConnection when
  // refused). The lease's session carries the deadline for its statements until it comes back.
  std::optional<Lease> try_acquire(Deadline deadline);
  std::size_t size() const { return m_size; }

 private:
  friend class Lease;
  void give_back(std::unique_ptr<Connection> c);

  std::string m_conninfo;
  std::size_t m_size;
  std::size_t m_opened = 0;
  std::vector<std::unique_ptr<Connection>> m_idle;
  std::mutex m_mutex;
  std::condition_variable m_cv;
};

}  // namespace keyline::core::pq
