// A small libpq wrapper: RAII connections and results, PQexecParams only (text parameters, binary for
// bytea), RAII transactions, retry on serialization failure and lost connections, and a connection pool.
// Every statement goes through PQexecParams with $n placeholders, so no value is ever spliced into SQL.
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
  void reconnect();  // PQreset; throws DbError(DbConnection) when it fails
  int backend_pid() const;
  pg_conn* raw() { return m_conn; }

 private:
  Result run(const std::string& sql, const Params& params, bool prepared);
  const std::string& prepared_name(const std::string& sql, std::size_t n_params);
  Result checked(Result res);
  DbError error_of(pg_result* r);

  std::string m_conninfo;
  pg_conn* m_conn = nullptr;
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
// destruction, acquire() waits when all are out. A connection that went bad is reopened on next use.
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
