#include "read_batch.h"

#include <exception>

namespace keyline::backupdb {

struct ReadBatcher::Pending {
  std::string key;
  RecordPtr result;
  std::exception_ptr error;
  bool done = false;
  std::condition_variable cv;  // its own: a finished batch wakes its own waiters only
};

ReadBatcher::ReadBatcher(std::size_t flushers, std::size_t max_batch, Fetch fetch)
    : m_flushers(flushers ? flushers : 1), m_max_batch(max_batch ? max_batch : 1), m_fetch(std::move(fetch)) {}

RecordPtr ReadBatcher::get(const std::string& key) {
  Pending p;
  p.key = key;
  std::unique_lock<std::mutex> lock(m_mutex);
  m_queue.push_back(&p);
  // Whoever finds a flusher slot free takes the queue's head as a batch; the others sleep until
  // theirs is done or they are woken to lead (core/src/pq_group.cpp, the same scheme).
  while (!p.done) {
    if (!m_queue.empty() && m_active < m_flushers) {
      std::deque<Pending*> batch;
      while (!m_queue.empty() && batch.size() < m_max_batch) {
        batch.push_back(m_queue.front());
        m_queue.pop_front();
      }
      ++m_active;
      ++m_stats.batches;
      m_stats.lookups += batch.size();
      if (!m_queue.empty() && m_active < m_flushers) m_queue.front()->cv.notify_one();
      lock.unlock();
      flush(batch);
      lock.lock();
      --m_active;
      for (Pending* b : batch) {
        b->done = true;
        b->cv.notify_one();
      }
      if (!m_queue.empty()) m_queue.front()->cv.notify_one();
    } else {
      p.cv.wait(lock);
    }
  }
  if (p.error) std::rethrow_exception(p.error);
  return p.result;
}

void ReadBatcher::flush(std::deque<Pending*>& batch) {
  std::vector<std::string> keys;
  keys.reserve(batch.size());
  std::unordered_map<std::string, bool> seen;  // two requests for one record in a batch: asked once
  for (Pending* b : batch)
    if (seen.emplace(b->key, true).second) keys.push_back(b->key);
  try {
    const auto found = m_fetch(keys);
    for (Pending* b : batch) {
      const auto it = found.find(b->key);
      if (it != found.end()) b->result = it->second;
    }
  } catch (...) {
    for (Pending* b : batch) b->error = std::current_exception();
  }
}

ReadBatcher::Stats ReadBatcher::stats() const {
  std::lock_guard<std::mutex> g(m_mutex);
  return m_stats;
}

std::string array_literal(const std::vector<std::string>& keys) {
  std::string out = "{";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i) out += ',';
    out += keys[i];
  }
  out += '}';
  return out;
}

}  // namespace keyline::backupdb
