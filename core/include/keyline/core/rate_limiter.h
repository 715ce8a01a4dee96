// Token bucket per client (RFC 6585 section 4 for the 429 answer), in a bounded LRU map.
//
// The key is the client address the server settled on (core::http::Request::client_address: behind a
// trusted proxy the X-Forwarded-For client, not the proxy) or a station id. A flood of fresh
// addresses must neither grow memory nor reset the buckets of the clients already limited, so at the
// bound the least recently used bucket goes, never the whole map (a wipe gave every limited client a
// full bucket again).
#pragma once

#include <chrono>
#include <cstddef>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>

namespace keyline::backupdb {

class RateLimiter {
 public:
  // rate: tokens per second (0 = no limit); burst = max(rate, 1); at most max_clients buckets.
  RateLimiter(double rate, std::size_t max_clients);

  bool allow(const std::string& key) { return allow(key, std::chrono::steady_clock::now()); }
  bool allow(const std::string& key, std::chrono::steady_clock::time_point now);
  std::size_t size() const;

 private:
  struct Bucket {
    std::string key;
    double tokens = 0;
    double last = 0;  // seconds on the steady clock
  };
  double m_rate, m_burst;
  std::size_t m_max;
  mutable std::mutex m_mutex;
  std::list<Bucket> m_lru;  // front = most recently used
  std::unordered_map<std::string, std::list<Bucket>::iterator> m_index;
};

}  // namespace keyline::backupdb
