#include "keyline/core/rate_limiter.h"

#include <algorithm>

namespace keyline::core {

RateLimiter::RateLimiter(double rate, std::size_t max_clients, double burst)
    : m_rate(rate), m_burst(burst > 0 ? std::max(burst, 1.0) : (rate < 1 ? 1 : rate)),
      m_max(max_clients < 1 ? 1 : max_clients) {}

RateLimiter::Verdict RateLimiter::take(const std::string& key, std::chrono::steady_clock::time_point at) {
  if (m_rate <= 0) return {};
  const double now = std::chrono::duration<double>(at.time_since_epoch()).count();
  std::lock_guard<std::mutex> g(m_mutex);
  auto it = m_index.find(key);
  if (it == m_index.end()) {
    if (m_lru.size() >= m_max) {
      m_index.erase(m_lru.back().key);
      m_lru.pop_back();
    }
    m_lru.push_front(Bucket{key, m_burst, now});
    it = m_index.emplace(key, m_lru.begin()).first;
  } else {
    m_lru.splice(m_lru.begin(), m_lru, it->second);
  }
  Bucket& b = *it->second;
  b.tokens = std::min(m_burst, b.tokens + (now - b.last) * m_rate);
  b.last = now;
  if (b.tokens < 1) return {false, (1 - b.tokens) / m_rate};
  b.tokens -= 1;
  return {};
}

std::size_t RateLimiter::size() const {
  std::lock_guard<std::mutex> g(m_mutex);
  return m_lru.size();
}

}  // namespace keyline::core
