// The listeners of `keyline-station run` (docs/station.md, "Metrics and the line page"), both on the
// servers' HTTP core (core/http_server.h: deadlines, connection caps, problem documents), plain HTTP,
// loopback unless the operator names another address, read-only:
//   --ops-listen     /metrics (Prometheus text 0.0.4) and /healthz, as the servers' operations listener
//   --status-listen  / (the line page, status_page.html, one document with inline CSS and JS),
//                    /events (server-sent events, WHATWG HTML section 9.2) and /healthz
//
// The core answers whole replies, so /events sends one event per response and ends it with a
// `retry:` field; the page's EventSource reconnects after that many milliseconds (HTML 9.2.3) with
// Last-Event-ID, and the next response waits until a device ended since that id, or a second passed.
// A waiting response holds a handler thread of this listener, never one of the line: the line only
// swaps in a new snapshot (publish) and wakes the waiters. Waiters are capped (kMaxWaiting); beyond
// the cap a response is sent at once with a longer retry, so a crowd of pages slows itself down.
// A client that never reads costs a connection (capped by the core) until the write deadline.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>

#include "keyline/core/connection_metrics.h"
#include "keyline/core/http_server.h"
#include "line_metrics.h"

namespace keyline::station::line_detail {

// "8080" -> "127.0.0.1:8080" (loopback unless a host is named); "HOST:PORT" as given.
std::string listen_address(const std::string& spec);

// A Last-Event-ID header (untrusted): "SEQ.ENDED" as this server sends it in `id:`, each at most 18
// digits. False for anything else, which is answered at once like a new page.
bool parse_event_id(const std::string& id, std::uint64_t& seq, std::int64_t& ended);

class StatusServers {
 public:
  static constexpr int kMaxWaiting = 6;  // /events responses waiting at once (of kWorkers)
  static constexpr int kWorkers = 8;
  static constexpr int kRetryMs = 250;  // EventSource reconnection time
  static constexpr int kRetryOverCapMs = 2000;
  // After the line's end the page listener stays this long, answering at once, so that open pages
  // get the final counts before it goes.
  static constexpr int kFinalGraceMs = 1500;

  // Empty addresses: that listener is not started. Throws ConfigError for a bad address, IoError when
  // one cannot bind (before the line claims anything). Prints each bound address on `out`.
  StatusServers(const std::string& ops_listen, const std::string& status_listen, const LineMetrics& metrics,
                std::ostream& out);
  ~StatusServers();  // the final grace (kFinalGraceMs), then stops both
  StatusServers(const StatusServers&) = delete;
  StatusServers& operator=(const StatusServers&) = delete;

  // From the line's progress thread: the snapshot (a JSON object), the line's gauges in the text
  // format, and devices ended so far (done + failed): a change wakes the waiting /events at once.
  void publish(std::string snapshot_json, std::string gauges, std::int64_t ended);

 private:
  struct Snapshot {
    std::string json = "{}";
    std::string gauges;
    std::uint64_t seq = 0;
    std::int64_t ended = 0;
  };
  core::http::Reply ops(const core::http::Request& request) const;
  core::http::Reply page(const core::http::Request& request);
  core::http::Reply events(const core::http::Request& request);
  std::shared_ptr<const Snapshot> latest() const;
  std::string metrics_text() const;

  const LineMetrics& m_metrics;
  mutable std::mutex m_mutex;  // m_latest, m_waiting, m_stop; never held across I/O
  std::condition_variable m_cv;
  std::shared_ptr<const Snapshot> m_latest;
  int m_waiting = 0;
  bool m_final = false;  // the line has ended: every /events is answered at once
  bool m_stop = false;
  std::atomic<std::uint64_t> m_events_sent{0};
  std::atomic<std::uint64_t> m_events_over_cap{0};
  core::http::ConnectionMetrics m_ops_connections{"keyline_station_ops"};
  core::http::ConnectionMetrics m_page_connections{"keyline_station_page"};
  std::unique_ptr<core::http::Server> m_ops;
  std::unique_ptr<core::http::Server> m_page;
};

}  // namespace keyline::station::line_detail
