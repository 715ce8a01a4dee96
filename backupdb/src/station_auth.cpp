#include "station_auth.h"

#include <sys/stat.h>

#include <atomic>
#include <cctype>
#include <deque>
#include <fstream>
#include <iterator>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <unordered_map>

#include <botan/asn1_time.h>
#include <botan/hash.h>

#include "keyline/core/bytes.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/json_log.h"
#include "keyline/core/log_sink.h"

namespace keyline::backupdb {

struct StationAuthority::Verdict {
  bool ok = false;
  std::string station_id;
  std::string log_detail;
  Botan::X509_Time not_before, not_after;
  std::string serial;         // the serial number's bytes, leading zero bytes dropped (as a deny entry has it)
  std::string issuer_digest;  // when ok: SHA-256 of the issuer certificate that verified it
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

std::string sha256(const std::vector<std::uint8_t>& data) {
  const auto h = Botan::HashFunction::create_or_throw("SHA-256")->process(data);
  return std::string(h.begin(), h.end());
}

std::string hex_of(const std::string& raw) {
  return core::to_hex(reinterpret_cast<const std::uint8_t*>(raw.data()), raw.size());
}

std::string without_leading_zeros(std::string bytes) {
  const auto first = bytes.find_first_not_of('\0');
  return first == std::string::npos ? std::string() : bytes.substr(first);
}

// Hex digits, ':' allowed between them (openssl prints fingerprints so), "0x" allowed in front; an odd
// count is a number's (a serial's) leading nibble. False on anything else.
bool parse_hex(std::string s, std::string& out) {
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s.erase(0, 2);
  std::string digits;
  for (const char c : s) {
    if (c == ':') continue;
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
    digits.push_back(c);
  }
  if (digits.empty()) return false;
  if (digits.size() % 2 != 0) digits.insert(digits.begin(), '0');
  const auto bytes = core::from_hex(digits);
  out.assign(bytes.begin(), bytes.end());
  return true;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The memory's key: SHA-256 of the exact DER (collision resistant, so one verdict per certificate), 32
// bytes whatever size of certificate a client sends. It is also the certificate's fingerprint, the log's
// and the deny list's name for it.
std::string der_digest(const std::vector<std::uint8_t>& der) { return sha256(der); }

// A subject DN comes from the client: one line of printable text, bounded, before it reaches the log.
std::string loggable(const std::string& s) {
  std::string out = s.substr(0, 200);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7F) c = '?';
  return out;
}

// "serial S sha256 F": what names one certificate in the log lines (docs/api.md), both upper-case hex.
std::string names(const std::string& serial, const std::string& digest) {
  return "serial " + (serial.empty() ? std::string("00") : hex_of(serial)) + " sha256 " + hex_of(digest);
}

}  // namespace

StationDenyList parse_station_deny(const std::string& text, const std::string& what) {
  StationDenyList list;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    const auto bad = [&](const std::string& why) {
      throw core::ConfigError(core::ErrorCode::Config, what + " line " + std::to_string(n) + ": " + why);
    };
    if (const auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
    std::istringstream words(line);
    std::vector<std::string> w{std::istream_iterator<std::string>(words), std::istream_iterator<std::string>()};
    if (w.empty()) continue;
    if (lower(w[0]) == "issuer-serial") {
      std::string issuer, serial;
      if (w.size() != 3) bad("issuer-serial takes the issuer's SHA-256 fingerprint and the serial number");
      if (!parse_hex(w[1], issuer) || issuer.size() != 32) bad("the issuer is not a SHA-256 fingerprint (64 hex digits)");
      // RFC 5280 section 4.1.2.2: at most 20 octets; a little slack for issuers that ignored it.
      if (!parse_hex(w[2], serial) || serial.size() > 32) bad("the serial number is not hex (at most 32 bytes)");
      list.issuer_serials.emplace(issuer, without_leading_zeros(serial));
      continue;
    }
    // A fingerprint: "sha256:HEX", bare HEX, or openssl's "sha256 Fingerprint=HEX" / "SHA256 Fingerprint=HEX".
    std::string entry = w[0];
    if (w.size() == 2 && lower(w[0]) == "sha256" && lower(w[1]).rfind("fingerprint=", 0) == 0)
      entry = w[1].substr(12);
    else if (w.size() != 1)
      bad("one entry a line: sha256:FINGERPRINT or issuer-serial ISSUER SERIAL");
    else if (lower(entry).rfind("sha256:", 0) == 0)
      entry.erase(0, 7);
    std::string digest;
    if (!parse_hex(entry, digest) || digest.size() != 32)
      bad("not a SHA-256 fingerprint (64 hex digits) nor issuer-serial ISSUER SERIAL");
    list.fingerprints.insert(digest);
  }
  return list;
}

// The deny list in force and the file it came from. Readers take the shared lock for one lookup; one
// thread at a time looks at the file (at most once a second) and swaps a new list in whole.
struct StationAuthority::Deny {
  std::string file;
  core::LogSink* log = nullptr;
  mutable std::shared_mutex mutex;
  StationDenyList list;
  struct Stamp {
    std::int64_t mtime_ns = -1, size = -1, inode = -1;
    bool operator==(const Stamp& o) const { return mtime_ns == o.mtime_ns && size == o.size && inode == o.inode; }
  } stamp;  // of the file as last read (good or bad: a bad file is reported once, not every second)
  std::atomic<std::int64_t> next_look_ns{0};
  std::mutex reloading;

  static std::int64_t steady_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // Throws core::ConfigError; `stamp_out` is the file's before it was read, so a write racing the read
  // is seen as a change at the next look.
  StationDenyList read(Stamp& stamp_out) const {
    struct stat st {};
    if (::stat(file.c_str(), &st) != 0)
      throw core::ConfigError(core::ErrorCode::Config, "--station-deny " + file + ": cannot be read");
    stamp_out = {static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                 static_cast<std::int64_t>(st.st_size), static_cast<std::int64_t>(st.st_ino)};
    constexpr std::int64_t kMaxBytes = 16 << 20;  // ~170,000 fingerprint lines: far more than stations exist
    if (st.st_size > kMaxBytes)
      throw core::ConfigError(core::ErrorCode::Config, "--station-deny " + file + ": larger than 16 MiB");
    std::ifstream in(file, std::ios::binary);
    if (!in) throw core::ConfigError(core::ErrorCode::Config, "--station-deny " + file + ": cannot be read");
    std::ostringstream text;
    text << in.rdbuf();
    return parse_station_deny(text.str(), "--station-deny " + file);
  }

  void write_log(core::log::Level level, const core::log::Fields& f) const {
    if (log)
      log->line(core::log::format_line(std::chrono::system_clock::now(), level, core::log::program(), "station_deny",
                                       "", "", f));
  }

  void maybe_reload() {
    const auto now = steady_ns();
    auto due = next_look_ns.load(std::memory_order_relaxed);
    if (now < due || !next_look_ns.compare_exchange_strong(due, now + 1000000000)) return;
    std::unique_lock<std::mutex> one(reloading, std::try_to_lock);
    if (!one.owns_lock()) return;
    struct stat st {};
    Stamp seen;
    if (::stat(file.c_str(), &st) == 0)
      seen = {static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
              static_cast<std::int64_t>(st.st_size), static_cast<std::int64_t>(st.st_ino)};
    if (seen == stamp) return;
    Stamp read_stamp;
    try {
      auto fresh = read(read_stamp);
      std::unique_lock<std::shared_mutex> g(mutex);
      list = std::move(fresh);
      stamp = read_stamp;
      const auto entries = static_cast<std::int64_t>(list.size());
      g.unlock();
      write_log(core::log::Level::Info, core::log::Fields().str("file", file).num("entries", entries).str(
                                            "detail", "deny list reloaded"));
    } catch (const core::Error& e) {
      // Never fail open: the list in force stays until the file reads as a whole list again.
      std::int64_t kept = 0;
      {
        std::unique_lock<std::shared_mutex> g(mutex);
        stamp = seen;
        kept = static_cast<std::int64_t>(list.size());
      }
      write_log(core::log::Level::Error, core::log::Fields()
                                             .str("file", file)
                                             .num("entries", kept)
                                             .str("detail", std::string(e.what()) + "; the previous list stays in force"));
    }
  }

  bool denies(const std::string& digest, const std::string& issuer_digest, const std::string& serial) const {
    std::shared_lock<std::shared_mutex> g(mutex);
    return list.fingerprints.count(digest) != 0 || list.issuer_serials.count({issuer_digest, serial}) != 0;
  }
};

StationAuthority::StationAuthority(std::vector<Botan::X509_Certificate> station_issuers)
    : m_issuers(std::move(station_issuers)), m_cache(std::make_unique<Cache>()) {
  for (const auto& i : m_issuers) m_issuer_digests.push_back(sha256(i.BER_encode()));
}
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
  const auto serial = cert->serial_number();
  v.serial = without_leading_zeros(std::string(serial.begin(), serial.end()));
  for (std::size_t i = 0; i < m_issuers.size(); ++i) {
    const auto& issuer = m_issuers[i];
    if (!(cert->issuer_dn() == issuer.subject_dn())) continue;
    try {
      std::unique_ptr<Botan::Public_Key> key(issuer.subject_public_key());
      if (cert->verify_signature(*key) == Botan::Certificate_Status_Code::VERIFIED) {
        v.ok = true;
        v.issuer_digest = m_issuer_digests[i];
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
  // After the memory, every time: an entry loaded now refuses a certificate accepted a moment ago.
  if (m_deny) {
    m_deny->maybe_reload();
    if (m_deny->denies(key, v.issuer_digest, v.serial))
      return refuse("certificate-denied", "this station certificate may no longer publish",
                    "station '" + v.station_id + "' certificate " + names(v.serial, key) + " is on the deny list " +
                        m_deny->file);
  }
  // RFC 5280 section 6.1.3 (a)(2): the validity period, against the caller's clock, every time.
  const Botan::X509_Time t(now);
  if (t < v.not_before || t > v.not_after)
    return refuse("certificate-expired", "the client certificate is not valid now",
                  "station '" + v.station_id + "' certificate " + names(v.serial, key) + " valid " +
                      v.not_before.readable_string() + " .. " + v.not_after.readable_string());
  StationCheck c;
  c.allowed = true;
  c.status = 200;
  c.station_id = v.station_id;
  // Which certificate published, not only which station: after a roll two of one station's certificates
  // are valid at once (docs/custody.md, "Roll").
  c.log_detail = "station " + v.station_id + " " + names(v.serial, key);
  return c;
}

void StationAuthority::deny_from(const std::string& file, core::LogSink* log) {
  auto d = std::make_unique<Deny>();
  d->file = file;
  d->log = log;
  d->list = d->read(d->stamp);
  d->next_look_ns = Deny::steady_ns() + 1000000000;
  m_deny = std::move(d);
}

std::size_t StationAuthority::denied_entries() const {
  if (!m_deny) return 0;
  std::shared_lock<std::shared_mutex> g(m_deny->mutex);
  return m_deny->list.size();
}

StationAuthority load_station_authority(const std::string& pem_file, const std::string& deny_file,
                                        core::LogSink* log) {
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
  StationAuthority authority(std::move(issuers));
  if (!deny_file.empty()) authority.deny_from(deny_file, log);
  return authority;
}

}  // namespace keyline::backupdb
