// A line on PC/SC readers (docs/line.md, "A line on readers"): a watcher thread waits on the readers
// (SCardGetStatusChange through core::pcsc::Context::wait) and hands each card put in to the workers,
// one device at a time per reader. pcsc-lite's per-reader event counter tells a card left in after
// it was done from one pulled out and put back, even when both happened between two waits.
#include <algorithm>

#include "keyline/core/error.h"
#include "line_engine.h"

namespace keyline::station::line_detail {

namespace {
constexpr auto kWatchTick = std::chrono::milliseconds(250);
constexpr auto kRelistEvery = std::chrono::seconds(1);
}  // namespace

// Before anything is opened or claimed: pcscd away (1421) or no reader matching (1422) end the run.
void Line::open_readers() {
  m_pcsc = std::make_unique<core::pcsc::Context>();
  for (const auto& name : m_pcsc->require_readers(m_profile.readers)) m_readers.push_back(ReaderSlot{name});
}

void Line::start_watcher() {
  m_watcher = std::thread([this] { watcher(); });
}

void Line::stop_watcher() {
  m_watcher_stop = true;
  {
    std::lock_guard<std::mutex> l(m_mutex);
    if (m_pcsc) m_pcsc->cancel();
  }
  if (m_watcher.joinable()) m_watcher.join();
}

// Called with m_mutex held; the progress thread prints it once.
void Line::note_reader(std::string text) { m_reader_notes.push_back(std::move(text)); }

// The readers watched (not removed) and their states now; called on the watcher thread.
void Line::watch_anew(WatchList& w) {
  {
    std::lock_guard<std::mutex> l(m_mutex);
    w.slots.clear();
    w.names.clear();
    for (std::size_t i = 0; i < m_readers.size(); ++i)
      if (!m_readers[i].gone) {
        w.slots.push_back(static_cast<int>(i));
        w.names.push_back(m_readers[i].name);
      }
  }
  w.known = w.names.empty() ? std::vector<core::pcsc::ReaderState>{} : m_pcsc->states(w.names);
  apply_states(w.known, w.slots);
}

// One round: wait for a change (or a tick), apply it, pick up new readers, hand over retries due.
// Returns true when the list of readers to watch changed.
bool Line::watch_round(WatchList& w, Clock::time_point& relist_at) {
  if (w.names.empty()) {
    std::this_thread::sleep_for(kWatchTick);
  } else {
    w.known = m_pcsc->wait(w.names, w.known, kWatchTick);
    apply_states(w.known, w.slots);
  }
  bool changed = false;
  for (const auto& s : w.known) changed = changed || s.gone;  // stop waiting on a reader that went away
  if (Clock::now() >= relist_at) {
    changed = relist_readers() || changed;
    relist_at = Clock::now() + kRelistEvery;
  }
  std::lock_guard<std::mutex> l(m_mutex);
  for (std::size_t i = 0; i < m_readers.size(); ++i) offer_card(static_cast<int>(i));
  return changed;
}

void Line::watcher() {
  WatchList w;
  bool rebuild = true, said_down = false;
  auto relist_at = Clock::now() + kRelistEvery;
  while (!m_watcher_stop.load()) {
    try {
      if (!m_pcsc) {
        auto ctx = std::make_unique<core::pcsc::Context>();
        std::lock_guard<std::mutex> l(m_mutex);
        m_pcsc = std::move(ctx);
        m_pcsc_away = false;
        note_reader("PC/SC is back");
        said_down = false;
      }
      if (rebuild) watch_anew(w);
      rebuild = watch_round(w, relist_at);
    } catch (const core::Error& e) {
      if (m_watcher_stop.load()) break;
      {
        // pcscd stopped or restarted: cards in flight fail on their own; new ones wait for it.
        std::lock_guard<std::mutex> l(m_mutex);
        if (!said_down)
          note_reader(std::string("PC/SC: ") + e.what() +
                      "; pcscd may have stopped: cards wait for it (tried again every second)");
        said_down = true;
        m_pcsc_away = true;
        m_pcsc.reset();
      }
      rebuild = true;
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }
}

// A reader that appeared (or came back) matching the patterns joins the line. True: watch anew.
bool Line::relist_readers() {
  const auto matched = core::pcsc::match_readers(m_pcsc->readers(), m_profile.readers);
  std::lock_guard<std::mutex> l(m_mutex);
  bool changed = false;
  for (const auto& name : matched) {
    auto it = std::find_if(m_readers.begin(), m_readers.end(), [&](const ReaderSlot& s) { return s.name == name; });
    if (it == m_readers.end()) {
      m_readers.push_back(ReaderSlot{name});
      note_reader("reader \"" + name + "\" added");
      changed = true;
    } else if (it->gone) {
      it->gone = false;
      note_reader("reader \"" + name + "\" is back");
      changed = true;
    }
  }
  return changed;
}

void Line::apply_states(const std::vector<core::pcsc::ReaderState>& states, const std::vector<int>& slots) {
  std::lock_guard<std::mutex> l(m_mutex);
  for (std::size_t k = 0; k < states.size() && k < slots.size(); ++k) {
    const auto& st = states[k];
    auto& s = m_readers[static_cast<std::size_t>(slots[k])];
    if (st.gone) {
      if (!s.gone) note_reader("reader \"" + s.name + "\" removed: the line goes on with the other readers");
      s.gone = true;
      s.present = false;
      continue;
    }
    const bool mute = st.present && st.mute;
    if (mute && !s.mute)
      note_reader("reader \"" + s.name + "\": the card in it does not answer (mute); take it out and put it in again");
    if (st.present != (s.present || s.mute) || st.event_count != s.event) m_last_activity = Clock::now();
    s.present = st.present && !mute;
    s.mute = mute;
    s.event = st.event_count;
    offer_card(slots[k]);
  }
}

// Called with m_mutex held: hands the card in reader `slot` to the workers when there is one to do.
void Line::offer_card(int slot) {
  auto& s = m_readers[static_cast<std::size_t>(slot)];
  if (s.busy || s.gone || !s.present || g_stop.load() || m_halt.load() || m_readers_end.load()) return;
  if (s.handled && s.event == s.handled_event) return;  // left in after it was done: not again
  if (Clock::now() < s.retry_at) return;
  if (m_options.count > 0 && static_cast<std::int64_t>(m_done.size() + m_waiting.size() + m_queue.size()) +
                                     m_in_flight >= m_options.count)
    return;
  const int attempt = s.tries > 0 && s.event == s.tried_event ? s.tries + 1 : 1;
  if (attempt > m_options.device_attempts) {
    // The same card, never pulled out, dropped its link every time: its claim stays with its chip.
    ++m_failed;
    ++s.failed;
    m_failures.push_back(std::string(core::kPcscScheme) + s.name + ": the card's link dropped " +
                         std::to_string(s.tries) + " times; take it out and put it in again");
    s.handled = true;
    s.handled_event = s.event;
    s.last_failed = true;
    s.tries = 0;
    return;
  }
  s.busy = true;
  s.tried_event = s.event;
  s.tries = attempt;
  ++s.taken;
  m_queue.push_back({{core::kPcscScheme + s.name, ""}, attempt, slot, s.event});
  m_last_activity = Clock::now();
  m_cv.notify_all();
}

// Called with m_mutex held when a worker is through with a card. `finished`: done, waiting in the
// outbox, or failed for a device reason; the card is not taken again until it is pulled out and put
// back. Otherwise the link dropped (the card pulled out): the claim stays with the chip, and after a
// pause (so the watcher sees whether the card is still in) the card is handed over again.
void Line::settle_card(const WorkItem& item, bool finished, bool failed) {
  auto& s = m_readers[static_cast<std::size_t>(item.reader)];
  s.busy = false;
  if (finished) {
    s.handled = true;
    s.handled_event = item.card_event;
    s.last_failed = failed;
    s.tries = 0;
  } else {
    s.retry_at = Clock::now() + std::chrono::milliseconds(m_options.reader_retry_ms);
  }
  offer_card(item.reader);
}

// The run thread asks: --idle-exit seconds without a card to do (nothing queued, in flight or
// inserted, pulled out or finished meanwhile).
bool Line::readers_finished() {
  if (m_options.idle_exit_ms <= 0) return false;
  std::lock_guard<std::mutex> l(m_mutex);
  if (m_in_flight > 0 || !m_queue.empty()) return false;
  for (const auto& s : m_readers)
    if (s.busy) return false;
  return Clock::now() - m_last_activity >= std::chrono::milliseconds(m_options.idle_exit_ms);
}

// Called with m_mutex held.
std::string Line::reader_state(const ReaderSlot& s) const {
  if (s.gone) return "removed";
  if (s.busy) return "busy";
  if (m_pcsc_away) return "pcscd away";
  if (s.mute) return "mute";
  if (!s.present) return "empty";
  if (s.handled && s.event == s.handled_event) return s.last_failed ? "failed, card in" : "done, card in";
  return "card in";
}

}  // namespace keyline::station::line_detail
