// The line's counts and latencies (line_metrics.h) and their Prometheus text (format 0.0.4, the
// conventions of https://prometheus.io/docs/practices/naming/: base units, _total counters).
#include "line_metrics.h"

#include <algorithm>
#include <cstdio>
#include <iterator>

namespace keyline::station::line_detail {

namespace {

using Clock = std::chrono::steady_clock;

// The device a worker thread has in hand, and when its last step ended.
thread_local std::string t_fixture;
thread_local Clock::time_point t_step_start;

std::atomic<LineMetrics*> g_token_metrics{nullptr};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void help(std::ostream& o, const std::string& name, const char* type, const char* text) {
  o << "# HELP " << name << " " << text << "\n# TYPE " << name << " " << type << "\n";
}

// "2xx" ... "5xx"; "none" when nothing answered.
std::string status_class(int status) {
  if (status < 100 || status > 599) return "none";
  return std::to_string(status / 100) + "xx";
}

// A TCP line knows a fixture once a worker took it: there is no "queued" fixture.
const char* state_order[] = {"busy", "retrying", "publishing", "failed", "done"};

int state_rank(const std::string& s) {
  const int n = static_cast<int>(std::size(state_order));
  for (int i = 0; i < n; ++i)
    if (s == state_order[i]) return i;
  return n;
}

}  // namespace

void Histogram::observe(double seconds) noexcept {
  std::size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  ++m_buckets[i];
  ++m_count;
  m_sum_us += static_cast<std::uint64_t>(std::max(0.0, seconds) * 1e6);
}

void Histogram::render(std::ostream& o, const std::string& name, const std::string& labels) const {
  const std::string sep = labels.empty() ? "" : labels + ",";
  std::uint64_t cumulative = 0;
  char le[32];
  for (std::size_t i = 0; i < kBounds.size(); ++i) {
    cumulative += m_buckets[i].load();
    std::snprintf(le, sizeof le, "%g", kBounds[i]);
    o << name << "_bucket{" << sep << "le=\"" << le << "\"} " << cumulative << "\n";
  }
  // Read after the buckets: a concurrent observe never makes +Inf smaller than the last bucket.
  cumulative += m_buckets[kBounds.size()].load();
  o << name << "_bucket{" << sep << "le=\"+Inf\"} " << cumulative << "\n";
  char sum[32];
  std::snprintf(sum, sizeof sum, "%.6f", static_cast<double>(m_sum_us.load()) / 1e6);
  const std::string braces = labels.empty() ? "" : "{" + labels + "}";
  o << name << "_sum" << braces << " " << sum << "\n";
  o << name << "_count" << braces << " " << cumulative << "\n";
}

const char* token_op_name(TokenOp op) noexcept {
  switch (op) {
    case TokenOp::Sign:
      return "sign";
    case TokenOp::Derive:
      return "derive";
    case TokenOp::Unwrap:
      return "unwrap";
    case TokenOp::Ecdh:
      return "ecdh";
  }
  return "other";
}

LineMetrics::LineMetrics() = default;

LineMetrics::~LineMetrics() {
  LineMetrics* self = this;
  g_token_metrics.compare_exchange_strong(self, nullptr);
}

LineMetrics::Fixture& LineMetrics::fixture_of_thread() {
  auto& f = m_fixtures[t_fixture];
  if (f.view.name.empty()) f.view.name = t_fixture;
  return f;
}

void LineMetrics::device_started(const std::string& fixture) {
  t_fixture = fixture;
  t_step_start = Clock::now();
  std::lock_guard<std::mutex> l(m_mutex);
  auto& f = fixture_of_thread();
  f.view.state = "busy";
  f.view.step = "connect";
  f.since = t_step_start;
}

void LineMetrics::step_done(Step step, const std::string& chip_id) {
  const auto now = Clock::now();
  m_steps[static_cast<std::size_t>(step)].observe(std::chrono::duration<double>(now - t_step_start).count());
  t_step_start = now;
  if (t_fixture.empty()) return;  // a personalizer outside a line's worker
  std::lock_guard<std::mutex> l(m_mutex);
  auto& f = fixture_of_thread();
  f.view.step = step_name(step);
  if (!chip_id.empty() && f.view.chip != chip_id) {
    f.view.chip = chip_id;
    m_chip_fixture[chip_id] = t_fixture;
  }
}

void LineMetrics::device_ended(const DeviceResult& r) {
  std::lock_guard<std::mutex> l(m_mutex);
  auto& f = fixture_of_thread();
  if (!r.chip_id.empty()) {
    f.view.chip = r.chip_id;
    m_chip_fixture[r.chip_id] = t_fixture;
  }
  if (!r.imei.empty()) f.view.imei = r.imei;
  f.view.step = step_name(r.reached);
  // A failure the line decides on next: tried again, or failed for good (device_failed).
  f.view.state = r.done ? "done" : r.in_outbox ? "publishing" : "retrying";
  f.since = Clock::now();
}

void LineMetrics::device_failed(int error_code, const std::string& chip_id) {
  std::lock_guard<std::mutex> l(m_mutex);
  ++m_failed_by_reason[error_code];
  const auto it = chip_id.empty() ? m_chip_fixture.end() : m_chip_fixture.find(chip_id);
  if (it == m_chip_fixture.end() && t_fixture.empty()) return;
  auto& f = it != m_chip_fixture.end() ? m_fixtures[it->second] : fixture_of_thread();
  f.view.state = "failed";
  ++f.view.failed;
}

void LineMetrics::device_published(const std::string& chip_id) {
  ++m_done;
  std::lock_guard<std::mutex> l(m_mutex);
  const auto it = m_chip_fixture.find(chip_id);
  if (it == m_chip_fixture.end()) return;
  auto& f = m_fixtures[it->second];
  f.view.state = "done";
  f.view.step = step_name(Step::Done);
  ++f.view.done;
}

void LineMetrics::publish_answered(int status, const char* outcome, double seconds) {
  m_publish.observe(seconds);
  std::lock_guard<std::mutex> l(m_mutex);
  ++m_publish_by_outcome[std::string(outcome) + "\t" + status_class(status)];
}

void LineMetrics::token_op(TokenOp op, double seconds) noexcept {
  m_token[static_cast<std::size_t>(op)].observe(seconds);
}

std::vector<FixtureView> LineMetrics::fixtures(std::size_t limit) const {
  std::vector<FixtureView> out;
  {
    std::lock_guard<std::mutex> l(m_mutex);
    for (const auto& [name, f] : m_fixtures) out.push_back(f.view);
  }
  std::stable_sort(out.begin(), out.end(), [](const FixtureView& a, const FixtureView& b) {
    return state_rank(a.state) < state_rank(b.state);
  });
  if (out.size() > limit) out.resize(limit);
  return out;
}

std::map<std::string, std::int64_t> LineMetrics::fixture_states() const {
  std::map<std::string, std::int64_t> n;
  for (const char* s : state_order) n[s] = 0;
  std::lock_guard<std::mutex> l(m_mutex);
  for (const auto& [name, f] : m_fixtures) ++n[f.view.state];
  return n;
}

void LineMetrics::render(std::ostream& o) const {
  help(o, "keyline_station_devices_done_total", "counter",
       "Devices whose record the public DB holds (this run).");
  o << "keyline_station_devices_done_total " << m_done.load() << "\n";
  help(o, "keyline_station_devices_failed_total", "counter",
       "Devices failed for good, by reason (the error code, docs/operations.md).");
  std::map<std::string, std::uint64_t> outcomes;
  {
    std::lock_guard<std::mutex> l(m_mutex);
    for (const auto& [code, n] : m_failed_by_reason)
      o << "keyline_station_devices_failed_total{reason=\"" << code << "\"} " << n << "\n";
    outcomes = m_publish_by_outcome;
  }
  help(o, "keyline_station_step_duration_seconds", "histogram",
       "Time one personalization step took (read_device includes the connect).");
  for (std::size_t s = 0; s < m_steps.size(); ++s) {
    const auto step = static_cast<Step>(s);
    if (step == Step::Connect || step == Step::Done) continue;  // no hook call ends them
    m_steps[s].render(o, "keyline_station_step_duration_seconds",
                      std::string("step=\"") + step_name(step) + "\"");
  }
  help(o, "keyline_station_token_operation_duration_seconds", "histogram",
       "Time one operation on the station's token took (PKCS#11).");
  for (std::size_t i = 0; i < kTokenOps; ++i)
    m_token[i].render(o, "keyline_station_token_operation_duration_seconds",
                      std::string("op=\"") + token_op_name(static_cast<TokenOp>(i)) + "\"");
  help(o, "keyline_station_publish_total", "counter",
       "Records sent to the public DB by the line's lanes, by outcome and HTTP status class.");
  for (const auto& [key, n] : outcomes) {
    const auto tab = key.find('\t');
    o << "keyline_station_publish_total{outcome=\"" << key.substr(0, tab) << "\",class=\""
      << key.substr(tab + 1) << "\"} " << n << "\n";
  }
  help(o, "keyline_station_publish_duration_seconds", "histogram", "One POST of a record to the public DB.");
  m_publish.render(o, "keyline_station_publish_duration_seconds", "");
  help(o, "keyline_station_fixtures", "gauge", "Fixtures of the line by state.");
  for (const auto& [state, n] : fixture_states())
    o << "keyline_station_fixtures{state=\"" << state << "\"} " << n << "\n";
}

void set_token_metrics(LineMetrics* metrics) noexcept { g_token_metrics.store(metrics); }

TokenTimer::~TokenTimer() {
  if (auto* m = g_token_metrics.load()) m->token_op(m_op, seconds_since(m_start));
}

}  // namespace keyline::station::line_detail
