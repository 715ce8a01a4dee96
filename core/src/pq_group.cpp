#include "keyline/core/pq_group.h"

#include <exception>
#include <optional>
#include <vector>

namespace keyline::core::pq {

struct GroupCommit::Pending {
  Statement statement;
  Result result;
  std::exception_ptr error;
  bool done = false;
  std::condition_variable cv;  // its own, so a finished batch wakes its own waiters and no others
};

GroupCommit::GroupCommit(Pool& pool, std::size_t flushers, std::size_t max_batch)
    : m_pool(pool), m_flushers(flushers ? flushers : 1), m_max_batch(max_batch ? max_batch : 1) {}

Result GroupCommit::exec(const std::string& sql, Params params) {
  Pending p;
  p.statement = Statement{sql, std::move(params)};
  std::unique_lock<std::mutex> lock(m_mutex);
  m_queue.push_back(&p);
  // Leader/follower: whoever finds the queue non-empty and a flusher slot free takes the queue's head
  // as a batch (its own statement or others'); everyone else sleeps until its statement is done or
  // it is woken to lead. A finishing flusher wakes the queue's head, so a free slot never idles
  // while statements wait.
  while (!p.done) {
    if (!m_queue.empty() && m_active < m_flushers) {
      std::deque<Pending*> batch;
      while (!m_queue.empty() && batch.size() < m_max_batch) {
        batch.push_back(m_queue.front());
        m_queue.pop_front();
      }
      ++m_active;
      ++m_stats.batches;
      m_stats.statements += batch.size();
      // More than a batch waits and another slot is free: its head leads the next batch now.
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
  return std::move(p.result);
}

void GroupCommit::flush(std::deque<Pending*>& batch) {
  const auto each_alone = [&](Connection& c) {
    for (Pending* b : batch) {
      try {
        b->result = c.exec_prepared(b->statement.sql, b->statement.params);
      } catch (...) {
        b->error = std::current_exception();
      }
    }
  };
  try {
    auto lease = m_pool.acquire();
    if (batch.size() == 1) return each_alone(*lease);
    std::vector<const Statement*> statements;
    statements.reserve(batch.size());
    for (Pending* b : batch) statements.push_back(&b->statement);
    try {
      auto results = lease->exec_pipeline(statements);
      for (std::size_t i = 0; i < batch.size(); ++i) batch[i]->result = std::move(results[i]);
    } catch (const DbError& e) {
      if (e.code() == ErrorCode::DbConnection) throw;
      // The batch rolled back as a whole: nothing of it happened, so each statement runs again alone.
      each_alone(*lease);
    }
  } catch (...) {
    for (Pending* b : batch) b->error = std::current_exception();
  }
}

GroupCommit::Stats GroupCommit::stats() const {
  std::lock_guard<std::mutex> g(m_mutex);
  return m_stats;
}

}  // namespace keyline::core::pq
