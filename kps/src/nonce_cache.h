// The KPS's replay guard for signed device requests (docs/kps.md). Private to kps/; header-only so that
// tests/unit/kps links it without the server.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_set>

namespace keyline::kps {

// Seen nonces until their timestamp leaves the skew window: a captured request cannot be replayed.
// Purging walks only the expired front of an expiry index, so a request costs O(log n) however many
// nonces the window holds; the hard bound keeps a flood of signed requests from growing it without end
// (past it the KPS answers 503: it cannot tell a replay from a fresh request, so it accepts neither).
class NonceCache {
 public:
  explicit NonceCache(std::size_t max_nonces = 262144) : m_max(max_nonces) {}
  std::size_t size() const {
    std::lock_guard<std::mutex> g(m_mutex);
    return m_seen.size();
  }
  enum class Use { First, Replayed, Full };

  Use first_use(const std::string& nonce, std::int64_t expires, std::int64_t now) {
    std::lock_guard<std::mutex> g(m_mutex);
    while (!m_by_expiry.empty() && m_by_expiry.begin()->first < now) {
      m_seen.erase(m_by_expiry.begin()->second);
      m_by_expiry.erase(m_by_expiry.begin());
    }
    if (m_seen.count(nonce)) return Use::Replayed;
    if (m_seen.size() >= m_max) return Use::Full;
    m_seen.insert(nonce);
    m_by_expiry.emplace(expires, nonce);
    return Use::First;
  }

 private:
  const std::size_t m_max;
  mutable std::mutex m_mutex;
  std::unordered_set<std::string> m_seen;
  std::multimap<std::int64_t, std::string> m_by_expiry;
};

}  // namespace keyline::kps
