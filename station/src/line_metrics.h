// What a running line counts for its operations listener (/metrics, Prometheus text format 0.0.4)
// and its line page (status_server.h): devices done and failed by reason, the time each step took,
// token operations, public DB publications by outcome, and each fixture's state. Private to the
// station library; one object per line (Line::m_metrics), fed by one-line calls from the workers,
// the step hook, the lanes and the token call sites.
//
// Nothing here blocks on a reader: the workers take a short lock of their own (never the line's) or
// touch atomics, and /metrics and the page read copies.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <ostream>
#include <string>
#include <vector>

#include "keyline/station/personalize.h"

namespace keyline::station::line_detail {

// A cumulative histogram over fixed bounds (seconds), lock-free.
class Histogram {
 public:
  static constexpr std::array<double, 14> kBounds{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                  0.25,  0.5,    1,     2.5,  5,     10,   30};
  void observe(double seconds) noexcept;
  // The _bucket, _sum and _count lines of one series; `labels` is "" or `step="claim"`.
  void render(std::ostream& o, const std::string& name, const std::string& labels) const;
  std::uint64_t count() const noexcept { return m_count.load(); }

 private:
  std::array<std::atomic<std::uint64_t>, kBounds.size() + 1> m_buckets{};
  std::atomic<std::uint64_t> m_count{0};
  std::atomic<std::uint64_t> m_sum_us{0};
};

// Token operations timed where the station calls the token (TokenTimer below).
enum class TokenOp { Sign, Derive, Unwrap, Ecdh };
constexpr std::size_t kTokenOps = 4;
const char* token_op_name(TokenOp op) noexcept;

// One fixture as the page shows it: a TCP fixture's address, or a reader's name.
struct FixtureView {
  std::string name;
  std::string state;  // "queued", "busy", "publishing", "done", "failed", "retrying"; readers: reader_state
  std::string step;   // the step reached (busy) or the step it failed at
  std::string chip;   // chip ID once read (public: it is printed on the chip)
  std::string imei;   // never a secret: it is in the public record
  std::int64_t done = 0;
  std::int64_t failed = 0;
};

class LineMetrics {
 public:
  LineMetrics();
  ~LineMetrics();  // no longer the token timers' line (set_token_metrics)
  LineMetrics(const LineMetrics&) = delete;
  LineMetrics& operator=(const LineMetrics&) = delete;

  // --- the workers' thread (one device at a time per thread) -------------------------------------
  void device_started(const std::string& fixture);
  void step_done(Step step, const std::string& chip_id);  // the personalizer's step hook
  void device_ended(const DeviceResult& result);          // before the line settles the result

  // --- the line's decisions, called with the line's mutex held -----------------------------------
  // Failed for good (count_failure on a worker; a refused record on a lane: by its chip).
  void device_failed(int error_code, const std::string& chip_id);
  void device_published(const std::string& chip_id);  // the public DB holds its record (note_done)

  // --- the publishing lanes -----------------------------------------------------------------------
  // `status` 0: no HTTP answer (unreachable). `outcome` is PublishOutcome's name.
  void publish_answered(int status, const char* outcome, double seconds);

  void token_op(TokenOp op, double seconds) noexcept;

  // The fixtures of a TCP line, busiest first then by name; at most `limit`.
  std::vector<FixtureView> fixtures(std::size_t limit) const;
  std::map<std::string, std::int64_t> fixture_states() const;  // state -> fixtures in it

  // Everything this object counts, in the text format (the line's gauges are added by the caller).
  void render(std::ostream& o) const;

 private:
  struct Fixture {
    FixtureView view;
    std::chrono::steady_clock::time_point since;
  };
  Fixture& fixture_of_thread();  // with m_mutex held

  mutable std::mutex m_mutex;  // the fixtures and the label maps; held for a few map operations
  std::map<std::string, Fixture> m_fixtures;
  std::map<std::string, std::string> m_chip_fixture;  // chip ID -> fixture, for "done" from the lanes
  std::map<int, std::uint64_t> m_failed_by_reason;
  std::map<std::string, std::uint64_t> m_publish_by_outcome;  // "outcome\tclass"
  std::atomic<std::uint64_t> m_done{0};
  std::array<Histogram, static_cast<std::size_t>(Step::Done) + 1> m_steps{};
  std::array<Histogram, kTokenOps> m_token{};
  Histogram m_publish;
};

// The line whose token calls are timed: set while a line runs (one per process; tests that run two
// lines at once get both counted in the last one started, which only blurs their figures).
void set_token_metrics(LineMetrics* metrics) noexcept;

// Times one token operation from construction to destruction (a throw counts too: the token was used).
class TokenTimer {
 public:
  explicit TokenTimer(TokenOp op) noexcept : m_op(op), m_start(std::chrono::steady_clock::now()) {}
  ~TokenTimer();
  TokenTimer(const TokenTimer&) = delete;
  TokenTimer& operator=(const TokenTimer&) = delete;

 private:
  TokenOp m_op;
  std::chrono::steady_clock::time_point m_start;
};

// f() timed as one token operation: `x = timed(TokenOp::Sign, [&] { return sign(...); });`
template <typename F>
auto timed(TokenOp op, F&& f) -> decltype(f()) {
  const TokenTimer timer(op);
  return f();
}

}  // namespace keyline::station::line_detail
