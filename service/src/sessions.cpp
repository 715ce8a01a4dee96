#include "sessions.h"

#include <botan/system_rng.h>

namespace keyline::service {

using core::Bytes;

std::string SessionTable::add(std::shared_ptr<LiveSession> s) {
  Bytes id(16);
  Botan::system_rng().randomize(id.data(), id.size());
  const std::string key = core::to_hex(id);
  const auto now = std::chrono::steady_clock::now();
  s->expires = now + m_ttl;
  std::lock_guard<std::mutex> g(m_mutex);
  if (++m_adds % 256 == 0) sweep(now);
  m_sessions.emplace(key, std::move(s));
  return key;
}

SessionTable::Found SessionTable::find(const std::string& id, std::shared_ptr<LiveSession>& out) {
  std::lock_guard<std::mutex> g(m_mutex);
  const auto it = m_sessions.find(id);
  if (it == m_sessions.end()) return Found::Unknown;
  if (std::chrono::steady_clock::now() >= it->second->expires) {
    m_sessions.erase(it);
    return Found::Expired;
  }
  out = it->second;
  return Found::Live;
}

std::size_t SessionTable::size() const {
  std::lock_guard<std::mutex> g(m_mutex);
  return m_sessions.size();
}

void SessionTable::sweep(std::chrono::steady_clock::time_point now) {
  for (auto it = m_sessions.begin(); it != m_sessions.end();)
    it = it->second->expires <= now ? m_sessions.erase(it) : std::next(it);
}

}  // namespace keyline::service
