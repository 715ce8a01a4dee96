#include "integrator.h"

#include "keyline/core/checkpoint.h"
#include "keyline/core/error.h"
#include "keyline/core/http.h"
#include "keyline/backupdb/witness.h"

namespace keyline::backupdb {
namespace {

namespace tlog = core::tlog;
namespace merkle = core::merkle;

// pg_try_advisory_lock key of the integrator: "kllog" in ASCII. Per database, so two public DBs on
// one cluster each have their own integrator.
constexpr std::int64_t kIntegratorLock = 0x6b6c6c6f67;
constexpr auto kRetry = std::chrono::milliseconds(1000);
// A witness that hangs delays the next checkpoint by at most this much; it never stops one.
constexpr auto kWitnessConnectTimeout = std::chrono::milliseconds(2000);
constexpr auto kWitnessTimeout = std::chrono::milliseconds(5000);

// For a log line's JSON string: the error texts here are the program's own, this only keeps a quote
// or control character from breaking the line.
std::string printable(const std::string& s) {
  std::string out;
  for (const char c : s) out += (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) ? '?' : c;
  return out;
}

}  // namespace

Integrator::Integrator(std::string conninfo, LogSettings settings, std::shared_ptr<const core::note::NoteSigner> signer,
                       LogReader& reader, Metrics& metrics, core::LogSink& log)
    : m_conninfo(std::move(conninfo)),
      m_settings(std::move(settings)),
      m_signer(std::move(signer)),
      m_reader(reader),
      m_metrics(metrics),
      m_log(log) {
  for (const auto& url : m_settings.witnesses) {
    core::http::ClientOptions o;
    o.base_url = url;
    o.ca_file = m_settings.witness_ca;
    o.connect_timeout = kWitnessConnectTimeout;
    o.io_timeout = kWitnessTimeout;
    m_witnesses.emplace_back(url, std::make_unique<core::http::Client>(o));
  }
}

Integrator::~Integrator() {
  {
    std::lock_guard<std::mutex> g(m_mutex);
    m_stop = true;
  }
  m_wake.notify_all();
  if (m_thread.joinable()) m_thread.join();
}

void Integrator::start() { m_thread = std::thread([this] { run(); }); }

void Integrator::notify() {
  std::lock_guard<std::mutex> g(m_mutex);
  if (m_waiting++ == 0) m_first_waiting = std::chrono::steady_clock::now();
  if (m_waiting >= m_settings.batch_entries) m_wake.notify_one();
}

void Integrator::pause(std::chrono::milliseconds d) {
  std::unique_lock<std::mutex> g(m_mutex);
  m_wake.wait_for(g, d, [this] { return m_stop; });
}

void Integrator::run() {
  for (;;) {
    {
      std::lock_guard<std::mutex> g(m_mutex);
      if (m_stop) return;
    }
    try {
      round();
    } catch (const core::Error& e) {
      m_log.line("{\"event\":\"log_integrator\",\"code\":" + std::to_string(e.numeric()) + ",\"detail\":\"" +
                 printable(e.what()) + "\"}");
      m_resumed = false;
      if (e.code() == errc::LogCorrupt) {
        // The stored tree is not the one the last checkpoint signed: signing on top of it would
        // publish the damage. Reads go on; an operator must look (docs/operations.md).
        m_conn.reset();
        m_locked = false;
        return;
      }
      if (dynamic_cast<const core::DbError*>(&e)) {
        m_conn.reset();  // the advisory lock goes with the session
        m_locked = false;
      }
      pause(kRetry);
    } catch (const std::exception& e) {
      m_log.line("{\"event\":\"log_integrator\",\"detail\":\"" + printable(e.what()) + "\"}");
      m_resumed = false;
      pause(kRetry);
    }
  }
}

void Integrator::round() {
  if (!m_locked && !take_lock()) {
    pause(kRetry);
    return;
  }
  if (!m_resumed) resume();
  if (!m_behind) wait_for_batch();
  std::chrono::steady_clock::time_point first;
  {
    std::lock_guard<std::mutex> g(m_mutex);
    if (m_stop) return;
    first = m_first_waiting;
    m_waiting = 0;
    m_first_waiting = {};
  }
  const auto entries = log_sql::entries_from(*m_conn, m_range.size(), m_settings.max_batch);
  // A full batch means more are waiting (a backlog after a restart, a migrated database): no pause.
  m_behind = entries.size() == m_settings.max_batch;
  if (entries.empty()) return;
  integrate(entries);
  if (first != std::chrono::steady_clock::time_point{})
    m_metrics.log_integrated(entries.size(), std::chrono::duration<double>(std::chrono::steady_clock::now() - first).count());
  else
    m_metrics.log_integrated(entries.size(), -1);
}

bool Integrator::take_lock() {
  if (!m_conn) m_conn = std::make_unique<core::pq::Connection>(m_conninfo);
  const auto r = m_conn->exec("SELECT pg_try_advisory_lock($1)", {kIntegratorLock});
  m_locked = r.text(0, 0) == "t";
  if (m_locked) m_log.line("{\"event\":\"log_integrator\",\"detail\":\"holds the integrator lock\"}");
  return m_locked;
}

core::tlog::TileReader Integrator::db_tile_reader() {
  return [this](const tlog::TileId& id) {
    const auto path = tlog::tile_path(id);
    auto t = log_sql::tile(*m_conn, path);
    if (!t) throw core::Error(errc::LogCorrupt, "the log's tile " + path + " is not stored");
    return *t;
  };
}

// The tree as the last checkpoint left it, read back from the stored tiles and checked against
// that checkpoint's root.
void Integrator::resume() {
  const auto cp = log_sql::latest_checkpoint(*m_conn);
  const std::uint64_t size = cp ? cp->size : 0;
  const auto read = db_tile_reader();
  try {
    const tlog::TileHashSource source(read, size);
    m_range = merkle::CompactRange::load(source, size);
    m_builder = tlog::TileBuilder(size, read);
  } catch (const core::FormatError& e) {
    throw core::Error(errc::LogCorrupt, std::string("the stored tiles do not make a tree: ") + e.what());
  }
  if (cp && m_range.root() != cp->root)
    throw core::Error(errc::LogCorrupt, "the stored tiles of size " + std::to_string(size) +
                                            " do not give the root of the checkpoint signed for it");
  m_bundle.clear();
  const std::uint64_t bundle_start = size - size % tlog::tile_width;
  for (auto& e : log_sql::entries_from(*m_conn, bundle_start, static_cast<std::size_t>(size - bundle_start)))
    m_bundle.push_back(std::move(e.entry));
  if (m_bundle.size() != size - bundle_start)
    throw core::Error(errc::LogCorrupt, "entries below the checkpoint's size are missing");
  if (!cp) {
    store_first_checkpoint();
  } else {
    m_reader.published(*cp);
    m_metrics.log_checkpoint(cp->size);
  }
  m_resumed = true;
}

void Integrator::store_first_checkpoint() {
  const auto cp = sign(0, m_range.root());
  store({}, cp);
  cosign(cp);
}

void Integrator::wait_for_batch() {
  std::unique_lock<std::mutex> g(m_mutex);
  m_wake.wait_for(g, std::chrono::milliseconds(m_settings.batch_ms),
                  [this] { return m_stop || m_waiting >= m_settings.batch_entries; });
}

void Integrator::integrate(const std::vector<LogEntry>& entries) {
  std::vector<std::pair<tlog::TileId, core::Bytes>> tiles;
  const auto visit = m_builder.visitor();
  const std::uint64_t before = m_range.size();
  if (entries.front().leaf_index != before) return;
  for (const auto& e : entries) {
    // Indexes are dense (0003_log.sql); a gap would mean an entry not yet visible, so stop there.
    if (e.leaf_index != m_range.size()) break;
    m_range.append(merkle::leaf_hash(e.entry), visit);
    m_bundle.push_back(e.entry);
    if (m_bundle.size() == tlog::tile_width) {
      tiles.emplace_back(tlog::TileId{0, m_range.size() / tlog::tile_width - 1, 256, true}, tlog::encode_entry_bundle(m_bundle));
      m_bundle.clear();
    }
  }
  if (!m_bundle.empty())
    tiles.emplace_back(tlog::TileId{0, m_range.size() / tlog::tile_width, static_cast<unsigned>(m_bundle.size()), true},
                       tlog::encode_entry_bundle(m_bundle));
  for (auto& t : m_builder.take_full()) tiles.push_back(std::move(t));
  for (auto& t : m_builder.partial()) tiles.push_back(std::move(t));
  // From here a failure leaves the memory ahead of the database: resume() reads it back.
  m_resumed = false;
  const auto cp = sign(m_range.size(), m_range.root());
  store(tiles, cp);
  m_resumed = true;
  cosign(cp);
}

LogCheckpoint Integrator::sign(std::uint64_t size, const merkle::Hash& root) const {
  tlog::Checkpoint c;
  c.origin = m_settings.origin;
  c.size = size;
  c.root = root;
  LogCheckpoint cp;
  cp.size = size;
  cp.root = root;
  cp.note = tlog::sign_checkpoint(c, {m_signer.get()});
  cp.signed_at = static_cast<std::int64_t>(std::time(nullptr));
  return cp;
}

void Integrator::store(const std::vector<std::pair<tlog::TileId, core::Bytes>>& tiles, const LogCheckpoint& cp) {
  core::pq::Transaction tx(*m_conn);
  // A partial tile of an upper level keeps its width (and path, and bytes) across many checkpoints:
  // it is already stored, and the same path always holds the same bytes.
  for (const auto& t : tiles)
    m_conn->exec_prepared("INSERT INTO log_tiles (path, data) VALUES ($1, $2) ON CONFLICT (path) DO NOTHING",
                          {tlog::tile_path(t.first), t.second});
  m_conn->exec_prepared("INSERT INTO log_checkpoints (tree_size, root, note) VALUES ($1, $2, $3)",
                        {static_cast<std::int64_t>(cp.size), merkle::to_bytes(cp.root), cp.note});
  tx.commit();
  m_reader.published(cp);
  m_metrics.log_checkpoint(cp.size);
}

// After the commit, so that a witness that is down or refuses never holds a checkpoint back: the
// checkpoint is served without that witness's line, and the log line says why (docs/transparency.md,
// "Witness").
void Integrator::cosign(const LogCheckpoint& cp) {
  if (m_witnesses.empty()) return;
  const auto read = db_tile_reader();
  const ProofLines proof = [&](std::uint64_t from) {
    std::string out;
    if (from == 0 || from == cp.size) return out;
    const tlog::TileHashSource source(read, cp.size);
    for (const auto& h : merkle::consistency_proof(source, from, cp.size)) out += core::to_base64(h.data(), h.size()) + "\n";
    return out;
  };
  bool added = false;
  for (const auto& [url, client] : m_witnesses) {
    std::string why;
    try {
      const auto lines = request_cosignature(*client, cp.note, cp.size, proof, why);
      if (lines && store_cosignature(cp, *lines)) {
        m_metrics.log_witness_cosigned();
        added = true;
        continue;
      }
      if (lines) why = "the witness's answer is not signature lines";
    } catch (const core::DbError&) {
      throw;
    } catch (const std::exception& e) {
      why = e.what();
    }
    m_metrics.log_witness_failed();
    m_log.line("{\"event\":\"log_witness\",\"witness\":\"" + printable(url) + "\",\"tree_size\":" +
               std::to_string(cp.size) + ",\"detail\":\"" + printable(why) + "\"}");
  }
  if (!added) return;
  if (auto stored = log_sql::checkpoint_of_size(*m_conn, cp.size)) m_reader.published(*stored);
}

// Keeps a witness's lines only if each one is a signature line the note still parses with (C2SP
// signed-note): a witness must not be able to make the served checkpoint unreadable. Their
// cosignatures are checked by the readers that pin the witness keys (recovery --witness-key).
bool Integrator::store_cosignature(const LogCheckpoint& cp, const std::string& lines) {
  std::vector<std::string> each;
  for (std::size_t at = 0; at < lines.size();) {
    const auto nl = lines.find('\n', at);
    if (nl == std::string::npos || nl == at) return false;
    each.push_back(lines.substr(at, nl + 1 - at));
    at = nl + 1;
  }
  if (each.empty()) return false;
  try {
    const auto before = core::note::parse_note(cp.note).signatures.size();
    if (core::note::parse_note(cp.note + lines).signatures.size() != before + each.size()) return false;
  } catch (const core::Error&) {
    return false;
  }
  core::pq::Transaction tx(*m_conn);
  for (const auto& line : each)
    m_conn->exec_prepared("INSERT INTO log_cosignatures (tree_size, line) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                          {static_cast<std::int64_t>(cp.size), line});
  tx.commit();
  return true;
}

}  // namespace keyline::backupdb
