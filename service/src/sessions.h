// The sessions a server holds in memory (docs/service.md "A session"): each lives at most the TTL
// from its start; a step's body is taken once (the same body again, or a step after the end: 409).
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "session.h"
#include "store.h"

namespace keyline::service {

struct LiveSession {
  LiveSession(Device d, HostSession h, std::string started)
      : device(std::move(d)), host(std::move(h)), started_at(std::move(started)) {}
  std::mutex mutex;
  Device device;
  HostSession host;
  std::string started_at;  // ISO 8601 UTC, for session_log
  std::chrono::steady_clock::time_point expires;
  int step = 1;  // the next batch of answers expected: 1 (first batch's) or 2
  bool done = false;
  std::set<std::string> seen;  // SHA-256 of the bodies taken
};

class SessionTable {
 public:
  explicit SessionTable(std::chrono::seconds ttl) : m_ttl(ttl) {}
  // A fresh random id (16 bytes, hex) for `s`.
  std::string add(std::shared_ptr<LiveSession> s);
  enum class Found { Live, Expired, Unknown };
  Found find(const std::string& id, std::shared_ptr<LiveSession>& out);
  std::size_t size() const;

 private:
  void sweep(std::chrono::steady_clock::time_point now);  // under m_mutex
  std::chrono::seconds m_ttl;
  mutable std::mutex m_mutex;
  std::map<std::string, std::shared_ptr<LiveSession>> m_sessions;
  std::size_t m_adds = 0;
};

}  // namespace keyline::service
