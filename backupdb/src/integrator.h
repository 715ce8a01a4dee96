// The log's integrator (docs/transparency.md, "The public DB's log"): one thread per serve process,
// and one integrating process per database (a PostgreSQL advisory lock: the other replicas only
// read, and one of them takes over when the holder's session ends). It reads the entries sequenced
// since the last checkpoint, appends them to the tree, writes the new tiles and entry bundles and a
// checkpoint signed by the log key, all in one transaction.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "keyline/backupdb/config.h"
#include "keyline/core/http.h"
#include "keyline/core/log_sink.h"
#include "keyline/core/merkle.h"
#include "keyline/core/pq.h"
#include "keyline/core/signed_note.h"
#include "keyline/core/tlog_tiles.h"
#include "log_store.h"
#include "metrics.h"

namespace keyline::backupdb {

class Integrator {
 public:
  Integrator(std::string conninfo, LogSettings settings, std::shared_ptr<const core::note::NoteSigner> signer,
             LogReader& reader, Metrics& metrics, core::LogSink& log);
  ~Integrator();  // stops the thread
  Integrator(const Integrator&) = delete;
  Integrator& operator=(const Integrator&) = delete;

  void start();
  // A record was sequenced by this process: counts towards the batch, and starts the latency clock.
  void notify();
  bool holds_lock() const { return m_locked.load(); }

 private:
  void run();
  void round();
  bool take_lock();
  void resume();
  void store_first_checkpoint();
  void wait_for_batch();
  void integrate(const std::vector<LogEntry>& entries);
  LogCheckpoint sign(std::uint64_t size, const core::merkle::Hash& root) const;
  void store(const std::vector<std::pair<core::tlog::TileId, core::Bytes>>& tiles, const LogCheckpoint& cp);
  void cosign(const LogCheckpoint& cp);
  bool store_cosignature(const LogCheckpoint& cp, const std::string& lines);
  core::tlog::TileReader db_tile_reader();
  void pause(std::chrono::milliseconds d);

  const std::string m_conninfo;
  const LogSettings m_settings;
  const std::shared_ptr<const core::note::NoteSigner> m_signer;
  LogReader& m_reader;
  // serve --witness, in order: each new checkpoint is pushed to every one after it is committed.
  std::vector<std::pair<std::string, std::unique_ptr<core::http::Client>>> m_witnesses;
  Metrics& m_metrics;
  core::LogSink& m_log;

  // Integrator thread only.
  std::unique_ptr<core::pq::Connection> m_conn;  // the session holding the advisory lock
  bool m_resumed = false;
  bool m_behind = false;  // the last read filled a whole batch
  core::merkle::CompactRange m_range;
  core::tlog::TileBuilder m_builder;
  std::vector<core::Bytes> m_bundle;  // the entries of the rightmost, partial entry bundle

  std::atomic<bool> m_locked{false};
  std::mutex m_mutex;
  std::condition_variable m_wake;
  bool m_stop = false;
  std::size_t m_waiting = 0;  // notify() calls since the last batch was read
  std::chrono::steady_clock::time_point m_first_waiting{};
  std::thread m_thread;
};

}  // namespace keyline::backupdb
