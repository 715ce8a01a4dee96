// Token bucket per client (RFC 6585 section 4 for the 429 answer), in a bounded LRU map. Shared by the
// public DB and the KPS (each keeps its own instance and decides what a key is).
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

namespace keyline::core {

class RateLimiter {
 public:
  // rate: tokens per second (0 = no limit); burst: bucket size, 0 = max(rate, 1) (values below 1 are 1);
  // at most max_clients buckets.
  RateLimiter(double rate, std::size_t max_clients, double burst = 0);

  // One request of `key`: taken (true) or over its rate (false, wait_s set to the seconds until a
  // token is back, for Retry-After).
  struct Verdict {
    bool allowed = true;
    double wait_s = 0;
  };
  Verdict take(const std::string& key, std::chrono::steady_clock::time_point now);
  bool allow(const std::string& key) { return allow(key, std::chrono::steady_clock::now()); }
  bool allow(const std::string& key, std::chrono::steady_clock::time_point now) { return take(key, now).allowed; }
  bool enabled() const { return m_rate > 0; }
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

}  // namespace keyline::core
