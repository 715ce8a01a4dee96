// The line's engine (station/include/keyline/station/line.h), private to the station library. One
// object per run; its parts live in one file each:
//   line.cpp           run(): open, fill the queue, start the threads, wait, drain, stop, summarize
//   line_workers.cpp   the workers and what a device's result does to the queue (retries, outages)
//   line_publish.cpp   the publishing lanes, the outbox sweep and the marker
//   line_progress.cpp  the progress line, pool top-ups and the summary
//   line_readers.cpp   PC/SC readers: the watcher that hands inserted cards to the workers
//   failover.cpp       the secondary token: opened beside the primary, the probe, the switch
//   line_metrics.cpp   counts and latencies for /metrics; status_server.cpp its listeners and the page
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <Poco/Net/Context.h>

#include "keyline/core/http.h"
#include "keyline/core/pcsc.h"
#include "keyline/core/pq.h"
#include "keyline/core/pq_group.h"
#include "keyline/station/keys.h"
#include "keyline/station/line.h"
#include "keyline/station/personalize.h"
#include "line_metrics.h"
#include "status_server.h"

namespace keyline::station::line_detail {

using Clock = std::chrono::steady_clock;

// Set by request_line_stop (a signal handler): lock-free (C++17 [support.signal]).
extern std::atomic<bool> g_stop;

constexpr int kDbSessions = 16;
// Group commit of the journal steps: batches in flight at once and statements per batch. Two
// flushers keep one batch executing while the other waits for its WAL flush.
constexpr std::size_t kCommitFlushers = 2;
constexpr std::size_t kCommitBatch = 32;

struct WorkItem {
  LineDevice device;
  int attempt = 1;
  int reader = -1;               // index into Line::m_readers for a card in a PC/SC reader
  std::uint32_t card_event = 0;  // the reader's event counter when the card was handed over
};

// A record a worker just wrote to the outbox, handed to a lane in memory (no read back).
struct FreshRecord {
  std::string chip_id;
  std::int64_t device_id = 0;
  std::string record_json;
};

// One PC/SC reader of a line on readers (line_readers.cpp). Guarded by Line::m_mutex.
struct ReaderSlot {
  std::string name;
  bool present = false;  // the watcher's latest view
  bool mute = false;
  bool gone = false;
  std::uint32_t event = 0;
  bool busy = false;  // a card of this reader is queued or in a worker: one device at a time
  // The card last finished (done or refused): a card left in is not taken again until the event
  // counter says it was pulled out and put back.
  bool handled = false;
  std::uint32_t handled_event = 0;
  bool last_failed = false;  // how the card last handled ended, for the state shown
  std::uint32_t tried_event = 0;  // the card of the last attempt, and how many attempts it had
  int tries = 0;
  Clock::time_point retry_at{};  // after a dropped link: let the watcher see whether the card is out
  std::int64_t taken = 0;
  std::int64_t failed = 0;
};

// Failures the next attempt on the same device can get past: a dropped link or journal race (the
// claim stays with the chip), or a stored key set whose halves disagree (KeyMismatch: that set was
// quarantined or its journal row voided, so the retry claims a sound one; docs/station.md, 4013).
bool link_trouble(int code);

// One token's station identity on the line (failover.cpp): the primary, or the secondary under the
// same root with its own Device CA, station TLS key and the mirrored master. Workers take the current
// one per device under Line::m_mutex; one replaced stays alive while a worker still uses it.
struct LineStation {
  int index = 0;           // 0 primary, 1 secondary
  StationConfig config;    // its token, PIN, PKI directory and station id (Personalizer keeps a reference)
  std::string ca_label;    // the Device CA key the probe looks for
  std::unique_ptr<StationKeys> keys;
  Poco::Net::Context::Ptr tls;  // mutual TLS with its station key, when publishing is configured
  std::unique_ptr<Personalizer> personalizer;
};

// A token error at a step that uses the token (claim, attest, issue, record): 1250 Pkcs11, 1251
// NoToken, 1253 KeyNotFound. It only triggers the probe: the same codes also mean an ordinary bug.
bool token_trouble(const DeviceResult& r);

class Line {
 public:
  Line(const StationConfig& config, const LineProfile& profile, const LineOptions& options, std::ostream& out);
  LineSummary run();

 private:
  // line.cpp
  void open();
  void fill_queue(core::pq::Connection& ctl);
  int worker_count() const;
  void watch_until_workers_end(core::pq::Connection& ctl, std::vector<std::thread>& workers);
  void wait_for_outbox(core::pq::Connection& ctl);
  bool want_more() const;
  bool count_reached() const;

  // line_workers.cpp
  void worker();
  bool next_item(WorkItem& item, std::shared_ptr<LineStation>& station);
  void settle(WorkItem item, DeviceResult r, const LineStation& station);
  void settle_locked(WorkItem item, DeviceResult r);
  void note_health(const DeviceResult& r, bool db_away);
  void keep_record(DeviceResult& r);
  bool retry_or_fail(WorkItem& item, const DeviceResult& r);
  void count_failure(const WorkItem& item, const DeviceResult& r);
  void note_done(const std::string& chip);
  bool db_outage_tolerated();
  bool wait_for_db(std::unique_lock<std::mutex>& l);

  // line_publish.cpp
  void start_lanes(int workers);
  void stop_lanes();
  void lane(bool sweeper);
  void marker();
  bool publish_one(core::pq::Connection& db, core::http::Client& client, const std::string& chip,
                   std::int64_t device_id, const std::string& record_json);
  int sweep(core::pq::Connection& db, core::http::Client& client);
  std::unique_ptr<core::http::Client> make_client() const;

  // failover.cpp
  std::shared_ptr<LineStation> open_station(int index, const StationConfig& config, std::size_t sessions);
  void open_secondary(std::size_t sessions);
  bool failover_holds(const WorkItem& item, const DeviceResult& r, const LineStation& station);
  bool wait_for_token(std::unique_lock<std::mutex>& l);
  void switch_to_secondary();
  std::int64_t failover_audit(const char* event, const std::string& detail);  // the audit row's id, 0: not written
  void summarize_failover(LineSummary& s) const;

  // line_progress.cpp
  void top_up_pool(core::pq::Connection& db);
  void progress(core::pq::Connection& db, bool final_line);
  std::string readers_progress() const;
  std::vector<std::int64_t> reader_done() const;
  LineSummary summarize(core::pq::Connection& ctl);
  void start_status();  // --ops-listen, --status-listen (status_server.h)
  void publish_status(std::int64_t backlog);
  std::string status_json(std::int64_t backlog, std::int64_t& ended) const;
  std::string status_fixtures() const;

  // line_readers.cpp
  bool reader_mode() const { return !m_profile.readers.empty(); }
  void open_readers();
  void start_watcher();
  void stop_watcher();
  struct WatchList {
    std::vector<int> slots;  // indexes into m_readers
    std::vector<std::string> names;
    std::vector<core::pcsc::ReaderState> known;
  };
  void watcher();
  void watch_anew(WatchList& w);
  bool watch_round(WatchList& w, Clock::time_point& relist_at);
  void apply_states(const std::vector<core::pcsc::ReaderState>& states, const std::vector<int>& slots);
  bool relist_readers();
  void note_reader(std::string text);
  void offer_card(int slot);
  void settle_card(const WorkItem& item, bool finished, bool failed);
  bool readers_finished();
  std::string reader_state(const ReaderSlot& s) const;

  StationConfig m_config;
  const LineProfile& m_profile;
  const LineOptions& m_options;
  std::ostream& m_out;

  // The station the workers use now (guarded by m_mutex), and the secondary waiting for a failover.
  std::shared_ptr<LineStation> m_station;
  std::shared_ptr<LineStation> m_secondary;
  // The current station's TLS context, shared by the lanes (guarded by m_mutex; a lane whose client
  // was made before the last switch makes a new one: m_tls_switches).
  Poco::Net::Context::Ptr m_tls;
  bool m_publishing_on = false;  // a public DB is configured (set once in open)
  std::atomic<int> m_tls_switches{0};
  // Failover (failover.cpp), all under m_mutex: a token error asks for a probe; while it runs no new
  // device starts; the devices that failed on the token wait in m_token_held for its answer.
  bool m_probe_wanted = false;
  bool m_probing = false;
  std::vector<std::pair<WorkItem, DeviceResult>> m_token_held;
  std::string m_failover_at;         // UTC of the switch, empty: none
  std::int64_t m_failover_after = 0;  // devices published when it switched
  std::int64_t m_probes = 0;
  std::int64_t m_by_token[2] = {0, 0};  // devices personalized (record kept) by each token
  std::unique_ptr<core::pq::Pool> m_db;            // the workers' station-database sessions
  std::unique_ptr<core::pq::GroupCommit> m_group;  // the workers' journal steps, committed in batches

  mutable std::mutex m_mutex;
  std::condition_variable m_cv;
  std::deque<WorkItem> m_queue;
  std::unordered_set<std::string> m_done;        // chip IDs published during this run
  std::unordered_set<std::string> m_waiting;     // chip IDs whose record waits in the outbox
  std::deque<FreshRecord> m_to_publish;          // fresh outbox rows from the workers, for the lanes
  std::unordered_set<std::string> m_publishing;  // chips a lane is sending, or the public DB holds unmarked
  std::deque<std::pair<std::string, std::int64_t>> m_marks;  // accepted by the public DB, to mark published
  std::condition_variable m_mark_cv;
  std::atomic<bool> m_marker_stop{false};
  std::int64_t m_in_flight = 0;
  std::int64_t m_failed = 0;
  std::int64_t m_chips_refused = 0;  // of m_failed: not genuine chips (nothing claimed)
  std::int64_t m_refused = 0;  // records the public DB refused for good during this run (parked)
  std::int64_t m_already = 0;
  std::vector<std::string> m_failures;
  std::atomic<bool> m_workers_done{false};
  std::atomic<bool> m_drainer_stop{false};
  std::atomic<bool> m_halt{false};  // pool empty with no top-up, or key sets that never open: start nothing new
  // Key sets refused in a row (4013). One is a damaged row; several in a row mean this station's wrapping
  // key is not the one that wrapped them (another station's pool, a re-initialised token): stop before
  // the whole shared pool moves to the quarantine.
  int m_key_mismatch_run = 0;
  std::string m_halted;  // why the line stopped starting devices, for the summary
  static constexpr int kKeyMismatchHalt = 3;
  // The station database away (a restart, a failover): devices wait for it instead of spending their
  // attempts in seconds. One worker probes it at a time, with a pause doubling to 5 s; the others wait.
  Clock::time_point m_db_down_since{};  // default-constructed: the database answers
  Clock::time_point m_db_probe_at{};
  std::chrono::milliseconds m_db_pause{100};
  bool m_db_probing = false;
  bool m_db_probe_ok = false;  // the last probe got through: workers go on (the outage clock runs until
                               // a device's statements get through, so --db-wait bounds the whole episode)
  std::atomic<std::int64_t> m_backlog{0};
  Clock::time_point m_start;
  Clock::time_point m_last_plain;
  std::string m_pool_note;
  std::vector<std::thread> m_lanes;
  std::thread m_marking;

  // A line on PC/SC readers (line_readers.cpp); all under m_mutex but the watcher's context.
  std::unique_ptr<core::pcsc::Context> m_pcsc;  // used by the watcher thread only (cancel() by any)
  std::vector<ReaderSlot> m_readers;
  // chip ID -> the reader it was last in. A reader's done count is taken from it and m_done when shown:
  // a sweeping lane may publish a record before its worker has settled the device.
  std::unordered_map<std::string, int> m_chip_reader;
  std::vector<std::string> m_reader_notes;             // "reader X removed" ..., said once on the progress output
  std::atomic<bool> m_readers_end{false};              // --count reached or --idle-exit: workers end
  std::atomic<bool> m_watcher_stop{false};
  bool m_pcsc_away = false;  // the watcher lost pcscd; it tries again every second
  Clock::time_point m_last_activity;
  std::thread m_watcher;

  LineMetrics m_metrics;  // its own lock; the workers never wait for a reader of it
  // Declared last, so destroyed first: its handlers read m_metrics.
  std::unique_ptr<StatusServers> m_status;
};

}  // namespace keyline::station::line_detail
