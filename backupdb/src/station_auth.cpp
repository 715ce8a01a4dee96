#include "station_auth.h"

#include <deque>
#include <shared_mutex>
#include <unordered_map>

#include <botan/asn1_time.h>
#include <botan/hash.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"

namespace keyline::backupdb {

struct StationAuthority::Verdict {
  bool ok = false;
  std::string station_id;
  std::string log_detail;
  Botan::X509_Time not_before, not_after;
};

struct StationAuthority::Cache {
  std::shared_mutex mutex;
  std::unordered_map<std::string, Verdict> known;  // SHA-256 of the DER -> verdict (accepted and refused)
  std::deque<std::string> accepted, refused;       // insertion order of each kind, for eviction

  bool lookup(const std::string& der, Verdict& out) {
    std::shared_lock<std::shared_mutex> g(mutex);
    const auto it = known.find(der);
    if (it == known.end()) return false;
    out = it->second;
    return true;
  }

  void remember(std::string der, const Verdict& v) {
    std::unique_lock<std::shared_mutex> g(mutex);
    if (known.count(der)) return;
    auto& order = v.ok ? accepted : refused;
    if (order.size() >= (v.ok ? kMaxRemembered : kMaxRefused)) {
      known.erase(order.front());
      order.pop_front();
    }
    order.push_back(der);
    known.emplace(std::move(der), v);
  }
};

namespace {

StationCheck refuse(const std::string& slug, const std::string& detail, std::string log_detail) {
  StationCheck c;
  c.slug = slug;
  c.detail = detail;
  c.log_detail = std::move(log_detail);
  return c;
}

const char* const kNotStation = "only a station certificate of this manufacturer may publish";

// The memory's key: SHA-256 of the exact DER (collision resistant, so one verdict per certificate), 32
// bytes whatever size of certificate a client sends.
std::string der_digest(const std::vector<std::uint8_t>& der) {
  const auto h = Botan::HashFunction::create_or_throw("SHA-256")->process(der);
  return std::string(h.begin(), h.end());
}

// A subject DN comes from the client: one line of printable text, bounded, before it reaches the log.
std::string loggable(const std::string& s) {
  std::string out = s.substr(0, 200);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7F) c = '?';
  return out;
}

}  // namespace

StationAuthority::StationAuthority(std::vector<Botan::X509_Certificate> station_issuers)
    : m_issuers(std::move(station_issuers)), m_cache(std::make_unique<Cache>()) {}
StationAuthority::~StationAuthority() = default;
StationAuthority::StationAuthority(StationAuthority&&) noexcept = default;
StationAuthority& StationAuthority::operator=(StationAuthority&&) noexcept = default;

StationAuthority::Verdict StationAuthority::examine(const std::vector<std::uint8_t>& der) const {
  Verdict v;
  std::unique_ptr<Botan::X509_Certificate> cert;
  try {
    cert = std::make_unique<Botan::X509_Certificate>(der);
  } catch (const Botan::Exception& e) {
    v.log_detail = "client certificate does not parse: " + loggable(e.what());
    return v;
  }
  try {
    v.station_id = core::read_station_id(*cert);
  } catch (const core::Error& e) {
    v.log_detail = "client certificate '" + loggable(cert->subject_dn().to_string()) + "': " + e.what();
    return v;
  }
  v.not_before = cert->not_before();
  v.not_after = cert->not_after();
  for (const auto& issuer : m_issuers) {
    if (!(cert->issuer_dn() == issuer.subject_dn())) continue;
    try {
      std::unique_ptr<Botan::Public_Key> key(issuer.subject_public_key());
      if (cert->verify_signature(*key) == Botan::Certificate_Status_Code::VERIFIED) {
        v.ok = true;
        return v;
      }
    } catch (const Botan::Exception&) {
      // A malformed signature is a refusal like a wrong one; the next issuer may still match.
    }
  }
  v.log_detail =
      "station certificate '" + loggable(cert->subject_dn().to_string()) + "' is not signed by a station issuer";
  return v;
}

StationCheck StationAuthority::check(const std::vector<std::uint8_t>& peer_der,
                                     std::chrono::system_clock::time_point now) const {
  if (peer_der.empty()) return refuse("not-a-station", kNotStation, "no client certificate");
  const std::string key = der_digest(peer_der);
  Verdict v;
  if (!m_cache->lookup(key, v)) {
    v = examine(peer_der);
    m_cache->remember(key, v);
  }
  if (!v.ok) return refuse("not-a-station", kNotStation, v.log_detail);
  // RFC 5280 section 6.1.3 (a)(2): the validity period, against the caller's clock, every time.
  const Botan::X509_Time t(now);
  if (t < v.not_before || t > v.not_after)
    return refuse("certificate-expired", "the client certificate is not valid now",
                  "station '" + v.station_id + "' certificate valid " + v.not_before.readable_string() + " .. " +
                      v.not_after.readable_string());
  StationCheck c;
  c.allowed = true;
  c.status = 200;
  c.station_id = v.station_id;
  c.log_detail = "station " + v.station_id;
  return c;
}

StationAuthority load_station_authority(const std::string& pem_file) {
  std::vector<Botan::X509_Certificate> issuers;
  try {
    issuers = core::load_certificates_pem(pem_file);
  } catch (const core::Error& e) {
    throw core::ConfigError(core::ErrorCode::Config, "--station-ca " + pem_file + ": " + e.what());
  }
  for (const auto& c : issuers)
    if (!c.is_CA_cert() || !(c.constraints() & Botan::KEY_CERT_SIGN))
      throw core::ConfigError(core::ErrorCode::Config, "--station-ca " + pem_file + ": '" +
                                                           c.subject_dn().to_string() +
                                                           "' is not a CA certificate with keyCertSign");
  return StationAuthority(std::move(issuers));
}

}  // namespace keyline::backupdb
