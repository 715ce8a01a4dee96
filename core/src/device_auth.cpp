#include "keyline/core/device_auth.h"

#include <botan/hash.h>
#include <botan/pubkey.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <memory>

#include "keyline/core/error.h"

namespace keyline::core::device_auth {

namespace {

constexpr const char* kContext = "keyline-device-auth-v1";
constexpr std::size_t kMaxChain = 4;
constexpr const char* kEmsa = "EMSA1(SHA-256)";

std::string sha256_hex(const std::string& s) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
  const auto d = h->final();
  return to_hex(d.data(), d.size());
}

FormatError bad(const std::string& what) { return FormatError(ErrorCode::BadCertificate, "device auth: " + what); }

bool is_nonce(const std::string& n) {
  if (n.size() != 32) return false;
  for (char c : n)
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

std::string string_to_sign(const std::string& method, const std::string& path, const std::string& body,
                           std::int64_t timestamp, const std::string& nonce) {
  return std::string(kContext) + "\n" + method + "\n" + path + "\n" + sha256_hex(body) + "\n" +
         std::to_string(timestamp) + "\n" + nonce;
}

std::map<std::string, std::string> sign_request(const Botan::Private_Key& identity_key,
                                                const std::vector<Bytes>& chain_der, const std::string& method,
                                                const std::string& path, const std::string& body,
                                                std::int64_t now, Botan::RandomNumberGenerator& rng) {
  if (chain_der.empty()) throw bad("no identity certificate to send");
  std::uint8_t n[16];
  rng.randomize(n, sizeof n);
  const std::string nonce = to_hex(n, sizeof n);
  const std::string tbs = string_to_sign(method, path, body, now, nonce);
  Botan::PK_Signer signer(identity_key, rng, kEmsa, Botan::DER_SEQUENCE);
  const auto sig = signer.sign_message(reinterpret_cast<const std::uint8_t*>(tbs.data()), tbs.size(), rng);
  std::string certs;
  for (const auto& d : chain_der) {
    if (!certs.empty()) certs += ",";
    certs += to_base64(d);
  }
  return {{kCertificatesHeader, certs},
          {kTimestampHeader, std::to_string(now)},
          {kNonceHeader, nonce},
          {kSignatureHeader, to_base64(sig.data(), sig.size())}};
}

ChainCache::ChainCache(std::size_t capacity) : m_capacity(std::max<std::size_t>(1, capacity)) {}

std::shared_ptr<const ChainCache::Entry> ChainCache::find(const std::string& key, std::int64_t now) {
  std::lock_guard<std::mutex> lock(m_mutex);
  const auto it = m_index.find(key);
  if (it == m_index.end()) {
    ++m_misses;
    return nullptr;
  }
  if (now >= it->second->second->not_after) {
    m_lru.erase(it->second);
    m_index.erase(it);
    ++m_misses;
    return nullptr;
  }
  m_lru.splice(m_lru.begin(), m_lru, it->second);
  ++m_hits;
  return it->second->second;
}

void ChainCache::put(const std::string& key, std::shared_ptr<const Entry> entry) {
  std::lock_guard<std::mutex> lock(m_mutex);
  const auto it = m_index.find(key);
  if (it != m_index.end()) {
    it->second->second = std::move(entry);
    m_lru.splice(m_lru.begin(), m_lru, it->second);
    return;
  }
  m_lru.emplace_front(key, std::move(entry));
  m_index.emplace(key, m_lru.begin());
  if (m_lru.size() > m_capacity) {
    m_index.erase(m_lru.back().first);
    m_lru.pop_back();
  }
}

std::size_t ChainCache::size() const {
  std::lock_guard<std::mutex> lock(m_mutex);
  return m_lru.size();
}

std::uint64_t ChainCache::hits() const {
  std::lock_guard<std::mutex> lock(m_mutex);
  return m_hits;
}

std::uint64_t ChainCache::misses() const {
  std::lock_guard<std::mutex> lock(m_mutex);
  return m_misses;
}

namespace {

std::int64_t checked_timestamp(const std::string& ts_text, std::int64_t now, std::int64_t max_skew) {
  if (ts_text.size() > 19 || ts_text.find_first_not_of("0123456789") != std::string::npos)
    throw bad("the timestamp is not a decimal number");
  const std::int64_t ts = std::strtoll(ts_text.c_str(), nullptr, 10);
  if (ts > now + max_skew || ts < now - max_skew)
    throw CryptoError(ErrorCode::Crypto, "device auth: timestamp outside the allowed clock skew");
  return ts;
}

std::vector<Bytes> chain_der_of(const std::string& certs) {
  std::vector<Bytes> ders;
  std::size_t i = 0;
  while (i <= certs.size()) {
    if (ders.size() == kMaxChain) throw bad("too many certificates");
    auto j = certs.find(',', i);
    if (j == std::string::npos) j = certs.size();
    ders.push_back(from_base64(std::string_view(certs).substr(i, j - i)));
    i = j + 1;
  }
  return ders;
}

// SHA-256 over length-prefixed DER: the anchors, a separator, then the chain in the order sent, so no
// two different (anchors, chain) pairs share a key by moving bytes between certificates.
std::string cache_key(const std::vector<Botan::X509_Certificate>& anchors, const std::vector<Bytes>& ders) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  auto add = [&](const std::vector<std::uint8_t>& d) {
    const std::uint64_t n = d.size();
    for (int k = 7; k >= 0; --k) h->update(static_cast<std::uint8_t>(n >> (8 * k)));
    h->update(d);
  };
  for (const auto& a : anchors) add(a.BER_encode());
  h->update(0xFF);
  for (const auto& d : ders) add(d);
  const auto out = h->final();
  return std::string(out.begin(), out.end());
}

std::shared_ptr<const ChainCache::Entry> verified_chain(const std::vector<Bytes>& ders,
                                                        const std::vector<Botan::X509_Certificate>& anchors) {
  auto e = std::make_shared<ChainCache::Entry>();
  for (const auto& der : ders) {
    try {
      e->chain.emplace_back(der);
    } catch (const std::exception&) {
      throw bad("a certificate does not parse");
    }
  }
  verify_chain(e->chain[0], {e->chain.begin() + 1, e->chain.end()}, anchors);
  const auto facts = read_identity(e->chain[0]);
  e->identity_key.reset(e->chain[0].subject_public_key());
  if (e->identity_key->algo_name() != "ECDSA") throw bad("the identity key is not ECDSA");
  e->chip_id = facts.chip_id;
  e->imei = facts.imei.str();
  e->not_after = std::numeric_limits<std::int64_t>::max();
  for (const auto& c : e->chain)
    e->not_after = std::min<std::int64_t>(e->not_after, static_cast<std::int64_t>(c.not_after().time_since_epoch()));
  return e;
}

}  // namespace

Verified verify_request(const std::function<std::string(const std::string&)>& header, const std::string& method,
                        const std::string& path, const std::string& body,
                        const std::vector<Botan::X509_Certificate>& anchors, std::int64_t now,
                        std::int64_t max_skew, ChainCache* cache) {
  const std::string certs = header(kCertificatesHeader);
  const std::string ts_text = header(kTimestampHeader);
  const std::string nonce = header(kNonceHeader);
  const std::string sig_b64 = header(kSignatureHeader);
  if (certs.empty() || ts_text.empty() || nonce.empty() || sig_b64.empty())
    throw bad("missing Keyline-Certificates, -Timestamp, -Nonce or -Signature");
  if (!is_nonce(nonce)) throw bad("the nonce is not 32 hex digits");
  const std::int64_t ts = checked_timestamp(ts_text, now, max_skew);

  const auto ders = chain_der_of(certs);
  const std::string key = cache ? cache_key(anchors, ders) : std::string();
  auto chain = cache ? cache->find(key, now) : nullptr;
  if (!chain) {
    chain = verified_chain(ders, anchors);
    if (cache) cache->put(key, chain);
  }
  const Bytes sig = from_base64(sig_b64);
  const std::string tbs = string_to_sign(method, path, body, ts, nonce);
  Botan::PK_Verifier verifier(*chain->identity_key, kEmsa, Botan::DER_SEQUENCE);
  if (!verifier.verify_message(reinterpret_cast<const std::uint8_t*>(tbs.data()), tbs.size(), sig.data(),
                               sig.size()))
    throw CryptoError(ErrorCode::Crypto, "device auth: the signature does not verify");
  Verified v;
  v.chip_id = chain->chip_id;
  v.imei = chain->imei;
  v.chain = chain->chain;
  v.nonce = nonce;
  v.timestamp = ts;
  return v;
}

}  // namespace keyline::core::device_auth
