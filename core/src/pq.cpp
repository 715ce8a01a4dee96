#include "keyline/core/pq.h"

#include <libpq-fe.h>
#include <poll.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <thread>

namespace keyline::core::pq {
namespace {

// PostgreSQL error codes, Appendix A of the PostgreSQL 15 manual.
ErrorCode classify(const std::string& sqlstate) {
  if (sqlstate == "23505") return ErrorCode::DbUniqueViolation;
  if (sqlstate == "40001" || sqlstate == "40P01") return ErrorCode::DbSerialization;
  // Class 08 (connection exception) and 57P01-57P03 (admin shutdown, crash shutdown, cannot connect now).
  if (sqlstate.rfind("08", 0) == 0 || sqlstate == "57P01" || sqlstate == "57P02" || sqlstate == "57P03")
    return ErrorCode::DbConnection;
  return ErrorCode::Db;
}

std::string first_line(const char* msg) {
  std::string s = msg ? msg : "";
  const auto nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Waits until the session's socket is ready for `events` or `deadline` passes (false then).
bool wait_socket(pg_conn* conn, short events, Deadline deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{PQsocket(conn), events, 0};
    if (p.fd < 0) return true;  // no socket: the next libpq call reports it
    const int n = ::poll(&p, 1, static_cast<int>(left.count()) + 1);
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return true;
  }
}

// PQcancel on a thread of its own: it connects, sends the request and waits for the server to close,
// so on a silent server it blocks as long as the statement did. At most a few at a time; beyond that
// a cancel is dropped (the session is closed anyway, so the backend ends at its next read or write).
std::atomic<int> g_cancels{0};
constexpr int kMaxCancels = 4;

void cancel_in_background(pg_conn* conn) {
  PGcancel* c = PQgetCancel(conn);
  if (!c) return;
  if (g_cancels.fetch_add(1) >= kMaxCancels) {
    --g_cancels;
    PQfreeCancel(c);
    return;
  }
  try {
    std::thread([c] {
      char err[256];
      PQcancel(c, err, sizeof err);
      PQfreeCancel(c);
      --g_cancels;
    }).detach();
  } catch (const std::system_error&) {
    --g_cancels;
    PQfreeCancel(c);
  }
}

}  // namespace

Result& Result::operator=(Result&& o) noexcept {
  if (this != &o) {
    if (m_res) PQclear(m_res);
    m_res = o.m_res;
    o.m_res = nullptr;
  }
  return *this;
}

Result::~Result() {
  if (m_res) PQclear(m_res);
}

int Result::rows() const { return m_res ? PQntuples(m_res) : 0; }
int Result::columns() const { return m_res ? PQnfields(m_res) : 0; }
bool Result::is_null(int row, int col) const { return PQgetisnull(m_res, row, col) == 1; }

std::string Result::text(int row, int col) const {
  if (row >= rows() || col >= columns()) throw DbError(ErrorCode::Db, "result has no such cell");
  return std::string(PQgetvalue(m_res, row, col), static_cast<std::size_t>(PQgetlength(m_res, row, col)));
}

std::int64_t Result::int64(int row, int col) const {
  const std::string s = text(row, col);
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0') throw DbError(ErrorCode::Db, "column is not an integer");
  return v;
}

Bytes Result::bytea(int row, int col) const {
  if (is_null(row, col)) return {};
  const std::string s = text(row, col);
  // bytea_output = hex (the default since PostgreSQL 9.0): "\x" followed by two hex digits per byte.
  if (s.size() < 2 || s[0] != '\\' || s[1] != 'x' || s.size() % 2 != 0)
    throw DbError(ErrorCode::Db, "bytea column is not in hex output form");
  Bytes out;
  out.reserve((s.size() - 2) / 2);
  for (std::size_t i = 2; i < s.size(); i += 2) {
    const int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
    if (hi < 0 || lo < 0) throw DbError(ErrorCode::Db, "bad hex in bytea column");
    out.push_back(static_cast<std::uint8_t>(hi * 16 + lo));
  }
  return out;
}

long Result::affected() const {
  if (!m_res) return 0;
  const char* t = PQcmdTuples(m_res);
  return (t && *t) ? std::strtol(t, nullptr, 10) : 0;
}

Connection::Connection(std::string conninfo) : m_conninfo(std::move(conninfo)) {
  m_conn = PQconnectdb(m_conninfo.c_str());
  if (PQstatus(m_conn) != CONNECTION_OK) {
    // libpq's message names host and port but never the password.
    const std::string msg = first_line(PQerrorMessage(m_conn));
    PQfinish(m_conn);
    m_conn = nullptr;
    throw DbError(ErrorCode::DbConnection, "cannot connect to PostgreSQL: " + msg);
  }
  // Server NOTICEs ("relation already exists, skipping") are for interactive psql users; libpq would
  // print them on stderr, in the middle of an operator's progress output.
  PQsetNoticeProcessor(m_conn, [](void*, const char*) {}, nullptr);
}

Connection::Connection(std::string conninfo, Deadline deadline) : m_conninfo(std::move(conninfo)), m_deadline(deadline) {
  m_conn = PQconnectStart(m_conninfo.c_str());
  const auto fail = [this](ErrorCode code, const std::string& why) {
    const std::string msg = m_conn ? first_line(PQerrorMessage(m_conn)) : std::string("out of memory");
    if (m_conn) PQfinish(m_conn);
    m_conn = nullptr;
    throw DbError(code, why + (code == ErrorCode::Timeout ? std::string() : ": " + msg));
  };
  if (!m_conn || PQstatus(m_conn) == CONNECTION_BAD) fail(ErrorCode::DbConnection, "cannot connect to PostgreSQL");
  // PostgreSQL 15 manual 34.1: poll for writing first, then as PQconnectPoll says, until OK or FAILED.
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK) {
    if (st == PGRES_POLLING_FAILED) fail(ErrorCode::DbConnection, "cannot connect to PostgreSQL");
    if (!wait_socket(m_conn, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline))
      fail(ErrorCode::Timeout, "PostgreSQL did not answer the connection in time");
    st = PQconnectPoll(m_conn);
  }
  PQsetNoticeProcessor(m_conn, [](void*, const char*) {}, nullptr);
}

Connection::Connection(Connection&& o) noexcept
    : m_conninfo(std::move(o.m_conninfo)), m_conn(o.m_conn), m_deadline(o.m_deadline), m_prepared(std::move(o.m_prepared)) {
  o.m_conn = nullptr;
}

Connection& Connection::operator=(Connection&& o) noexcept {
  if (this != &o) {
    if (m_conn) PQfinish(m_conn);
    m_conninfo = std::move(o.m_conninfo);
    m_conn = o.m_conn;
    m_deadline = o.m_deadline;
    m_prepared = std::move(o.m_prepared);
    o.m_conn = nullptr;
  }
  return *this;
}

Connection::~Connection() {
  if (m_conn) PQfinish(m_conn);
}

bool Connection::ok() const { return m_conn && PQstatus(m_conn) == CONNECTION_OK; }

int Connection::backend_pid() const { return m_conn ? PQbackendPID(m_conn) : 0; }

void Connection::reconnect() {
  if (m_deadline) {  // PQreset blocks; a new session within the deadline does not
    *this = Connection(m_conninfo, *m_deadline);
    return;
  }
  if (!m_conn) {
    *this = Connection(m_conninfo);
    return;
  }
  PQreset(m_conn);
  m_prepared.clear();  // a new session knows none of the old one's statements
  if (PQstatus(m_conn) != CONNECTION_OK)
    throw DbError(ErrorCode::DbConnection, "cannot reconnect to PostgreSQL: " + first_line(PQerrorMessage(m_conn)));
}

Result Connection::exec(const std::string& sql, const Params& params) { return run(sql, params, false); }

Result Connection::exec_prepared(const std::string& sql, const Params& params) { return run(sql, params, true); }

namespace {

// PQexecParams' parameter arrays; they point into `params`, which must outlive the call.
struct ParamArrays {
  explicit ParamArrays(const Params& params)
      : values(params.size()), lengths(params.size()), formats(params.size()) {
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (params[i].is_null()) continue;
      values[i] = params[i].value().data();
      lengths[i] = static_cast<int>(params[i].value().size());
      formats[i] = params[i].binary() ? 1 : 0;
    }
  }
  int count() const { return static_cast<int>(values.size()); }
  std::vector<const char*> values;
  std::vector<int> lengths, formats;
};

}  // namespace

const std::string& Connection::prepared_name(const std::string& sql, std::size_t n_params) {
  auto it = m_prepared.find(sql);
  if (it == m_prepared.end()) {
    const std::string name = "keyline_" + std::to_string(m_prepared.size() + 1);
    if (m_deadline) {
      if (PQsendPrepare(m_conn, name.c_str(), sql.c_str(), static_cast<int>(n_params), nullptr) != 1)
        throw DbError(ErrorCode::DbConnection, "cannot send a statement: " + first_line(PQerrorMessage(m_conn)));
      Result r(next_result());
      while (PGresult* extra = next_result()) PQclear(extra);
      checked(std::move(r));
    } else {
      checked(Result(PQprepare(m_conn, name.c_str(), sql.c_str(), static_cast<int>(n_params), nullptr)));
    }
    it = m_prepared.emplace(sql, name).first;
  }
  return it->second;
}

Result Connection::run(const std::string& sql, const Params& params, bool prepared) {
  if (!m_conn) throw DbError(ErrorCode::DbConnection, "no connection");
  const ParamArrays a(params);
  if (m_deadline) {
    // PQexec* would block on the socket for ever; PQsend* + poll() stops at the deadline.
    const std::string* name = prepared ? &prepared_name(sql, params.size()) : nullptr;
    const int sent = name ? PQsendQueryPrepared(m_conn, name->c_str(), a.count(), a.values.data(), a.lengths.data(),
                                                a.formats.data(), 0)
                          : PQsendQueryParams(m_conn, sql.c_str(), a.count(), nullptr, a.values.data(),
                                              a.lengths.data(), a.formats.data(), 0);
    if (sent != 1) throw DbError(ErrorCode::DbConnection, "cannot send a statement: " + first_line(PQerrorMessage(m_conn)));
    // As PQexec: the last result counts (one statement gives one), read up to the end of the answer.
    Result r(next_result());
    while (PGresult* extra = next_result()) r = Result(extra);
    return checked(std::move(r));
  }
  if (!prepared) {
    return checked(Result(PQexecParams(m_conn, sql.c_str(), a.count(), nullptr, a.values.data(), a.lengths.data(),
                                       a.formats.data(), 0)));
  }
  const std::string& name = prepared_name(sql, params.size());
  return checked(
      Result(PQexecPrepared(m_conn, name.c_str(), a.count(), a.values.data(), a.lengths.data(), a.formats.data(), 0)));
}

std::vector<Result> Connection::exec_pipeline(const std::vector<const Statement*>& batch) {
  if (!m_conn) throw DbError(ErrorCode::DbConnection, "no connection");
  // Statements new to this session are prepared first, each in its own round trip, outside the pipeline.
  std::vector<const std::string*> names;
  names.reserve(batch.size());
  for (const Statement* s : batch) names.push_back(&prepared_name(s->sql, s->params.size()));
  const auto lost = [&](const char* what) {
    return DbError(ErrorCode::DbConnection, std::string(what) + ": " + first_line(PQerrorMessage(m_conn)));
  };
  if (PQenterPipelineMode(m_conn) != 1) throw lost("cannot enter pipeline mode");
  // A pipeline left half read cannot serve its next user: the session is dropped and reopened by
  // the next use (Pool::acquire, run_transaction) instead.
  struct DropIfStuck {
    Connection& c;
    ~DropIfStuck() {
      if (c.m_conn && PQpipelineStatus(c.m_conn) != PQ_PIPELINE_OFF) {
        PQfinish(c.m_conn);
        c.m_conn = nullptr;
        c.m_prepared.clear();
      }
    }
  } guard{*this};
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const ParamArrays a(batch[i]->params);  // libpq copies the values into its output buffer
    if (PQsendQueryPrepared(m_conn, names[i]->c_str(), a.count(), a.values.data(), a.lengths.data(),
                            a.formats.data(), 0) != 1)
      throw lost("cannot send a pipelined statement");
  }
  if (PQpipelineSync(m_conn) != 1) throw lost("cannot send the pipeline's Sync");
  // Every statement answers with its result and a NULL; the Sync with PGRES_PIPELINE_SYNC. All of it
  // is read even after a failure, so the connection leaves pipeline mode clean for its next user.
  std::vector<Result> out;
  out.reserve(batch.size());
  std::optional<DbError> failed;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    Result r(next_result());
    if (!r.raw()) throw lost("connection lost in a pipeline");
    while (PGresult* extra = next_result()) PQclear(extra);
    const ExecStatusType st = PQresultStatus(r.raw());
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_PIPELINE_ABORTED && !failed)
      failed = error_of(r.raw());
    if (PQstatus(m_conn) != CONNECTION_OK) throw failed ? *failed : lost("connection lost in a pipeline");
    out.push_back(std::move(r));
  }
  Result sync(next_result());
  if (!sync.raw() || PQresultStatus(sync.raw()) != PGRES_PIPELINE_SYNC) throw lost("pipeline ended without its Sync");
  if (PQexitPipelineMode(m_conn) != 1) throw lost("cannot leave pipeline mode");
  if (failed) throw *failed;
  return out;
}

// Deadline mode runs libpq non-blocking, so neither a send into a full socket buffer nor a read
// waits inside libpq: every wait is this poll(), bounded by the deadline.
void Connection::wait_ready() {
  if (!m_conn) throw DbError(ErrorCode::DbConnection, "no connection");
  if (!PQisnonblocking(m_conn)) PQsetnonblocking(m_conn, 1);
  for (;;) {
    const int flushed = PQflush(m_conn);
    if (flushed < 0) throw DbError(ErrorCode::DbConnection, "cannot send a statement: " + first_line(PQerrorMessage(m_conn)));
    if (flushed == 0 && !PQisBusy(m_conn)) return;
    if (!wait_socket(m_conn, flushed == 1 ? POLLIN | POLLOUT : POLLIN, *m_deadline))
      time_out("PostgreSQL did not answer in time");
    if (PQconsumeInput(m_conn) != 1)
      throw DbError(ErrorCode::DbConnection, "connection lost: " + first_line(PQerrorMessage(m_conn)));
  }
}

void Connection::set_deadline(std::optional<Deadline> deadline) {
  m_deadline = deadline;
  // Back to libpq's blocking mode for the statements without one (PQpipelineSync flushes in it).
  if (!deadline && m_conn && PQisnonblocking(m_conn)) PQsetnonblocking(m_conn, 0);
}

pg_result* Connection::next_result() {
  if (!m_deadline) return PQgetResult(m_conn);
  wait_ready();
  return PQgetResult(m_conn);
}

void Connection::time_out(const char* what) {
  // The backend may still be running the statement (a slow plan, a lock): the cancel stops it. The
  // session itself is in the middle of an answer and cannot serve another statement: it is closed
  // (non-blocking, so its Terminate message cannot wait on a full socket either).
  cancel_in_background(m_conn);
  PQsetnonblocking(m_conn, 1);
  PQfinish(m_conn);
  m_conn = nullptr;
  m_prepared.clear();
  throw DbError(ErrorCode::Timeout, what);
}

Result Connection::checked(Result res) {
  PGresult* r = res.raw();
  const ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return res;
  throw error_of(r);
}

DbError Connection::error_of(pg_result* r) {
  const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  std::string sqlstate = state ? state : "";
  ErrorCode code = classify(sqlstate);
  if (!m_conn || PQstatus(m_conn) != CONNECTION_OK) code = ErrorCode::DbConnection;
  const std::string msg = first_line(r ? PQresultErrorMessage(r) : PQerrorMessage(m_conn));
  return DbError(code, "SQL failed (" + (sqlstate.empty() ? std::string("no SQLSTATE") : sqlstate) + "): " + msg,
                 sqlstate);
}

Transaction::Transaction(Connection& conn, Isolation iso) : m_conn(conn) {
  switch (iso) {
    case Isolation::ReadCommitted: m_conn.exec("BEGIN ISOLATION LEVEL READ COMMITTED"); break;
    case Isolation::RepeatableRead: m_conn.exec("BEGIN ISOLATION LEVEL REPEATABLE READ"); break;
    case Isolation::Serializable: m_conn.exec("BEGIN ISOLATION LEVEL SERIALIZABLE"); break;
  }
}

Transaction::~Transaction() {
  if (!m_open) return;
  try {
    if (m_conn.ok()) m_conn.exec("ROLLBACK");
  } catch (...) {
    // A destructor must not throw; the server aborts the transaction when the session ends anyway.
  }
}

void Transaction::commit() {
  m_open = false;
  m_conn.exec("COMMIT");
}

void Transaction::rollback() {
  m_open = false;
  m_conn.exec("ROLLBACK");
}

void retry_transient(const RetryPolicy& policy, const std::function<void()>& attempt,
                     const std::function<void(const DbError&)>& before_retry) {
  auto delay = policy.backoff;
  for (int n = 1;; ++n) {
    try {
      attempt();
      return;
    } catch (const DbError& e) {
      const bool retryable = e.code() == ErrorCode::DbSerialization || e.code() == ErrorCode::DbConnection;
      if (!retryable || n >= policy.attempts) throw;
      std::this_thread::sleep_for(delay);
      delay *= 2;
      if (before_retry) before_retry(e);
    }
  }
}

void run_transaction(Connection& conn, Isolation iso, const std::function<void(Transaction&)>& work,
                     RetryPolicy policy) {
  retry_transient(
      policy,
      [&] {
        if (!conn.ok()) conn.reconnect();
        Transaction tx(conn, iso);
        work(tx);
        if (tx.open()) tx.commit();  // work may have committed or rolled back itself
      },
      [&](const DbError& e) {
        if (e.code() == ErrorCode::DbConnection || !conn.ok()) {
          try {
            conn.reconnect();
          } catch (const DbError&) {
            // The next attempt reports it if the server is still away.
          }
        }
      });
}

Pool::Lease::~Lease() {
  if (m_pool && m_conn) m_pool->give_back(std::move(m_conn));
}

Pool::Pool(std::string conninfo, std::size_t size) : m_conninfo(std::move(conninfo)), m_size(size ? size : 1) {}

std::optional<Pool::Lease> Pool::try_acquire(Deadline deadline) {
  std::unique_lock<std::mutex> lock(m_mutex);
  if (!m_cv.wait_until(lock, deadline, [&] { return !m_idle.empty() || m_opened < m_size; })) return std::nullopt;
  std::unique_ptr<Connection> c;
  if (!m_idle.empty()) {
    c = std::move(m_idle.back());
    m_idle.pop_back();
  } else {
    ++m_opened;
  }
  lock.unlock();
  try {
    if (!c) {
      c = std::make_unique<Connection>(m_conninfo, deadline);
    } else {
      c->set_deadline(deadline);
      if (!c->ok()) c->reconnect();
    }
  } catch (...) {
    std::lock_guard<std::mutex> g(m_mutex);
    --m_opened;  // the slot is free again; `c`, if any, goes with it
    m_cv.notify_one();
    throw;
  }
  return Lease(*this, std::move(c));
}

Pool::Lease Pool::acquire() {
  std::unique_lock<std::mutex> lock(m_mutex);
  m_cv.wait(lock, [&] { return !m_idle.empty() || m_opened < m_size; });
  if (!m_idle.empty()) {
    auto c = std::move(m_idle.back());
    m_idle.pop_back();
    lock.unlock();
    if (!c->ok()) {
      try {
        c->reconnect();
      } catch (...) {
        give_back(std::move(c));
        throw;
      }
    }
    return Lease(*this, std::move(c));
  }
  ++m_opened;
  lock.unlock();
  try {
    return Lease(*this, std::make_unique<Connection>(m_conninfo));
  } catch (...) {
    std::lock_guard<std::mutex> g(m_mutex);
    --m_opened;
    m_cv.notify_one();
    throw;
  }
}

void Pool::give_back(std::unique_ptr<Connection> c) {
  c->set_deadline(std::nullopt);
  const bool keep = c->ok();
  if (!keep) c.reset();  // closed after a deadline, or lost: a later acquire opens a new one
  {
    std::lock_guard<std::mutex> g(m_mutex);
    if (keep) m_idle.push_back(std::move(c));
    else --m_opened;
  }
  m_cv.notify_one();
}

}  // namespace keyline::core::pq
