// Who may publish to the public DB (docs/api.md, docs/decisions.md "Station certificate profile"):
// a client certificate with the station profile (core::read_station_id: EKU exactly clientAuth, the
// keyline station policy, OU=keyline station, CN=<station id>) signed by one of the configured station
// issuers (--station-ca) and valid now. A server certificate of the same CA (serverAuth) never passes.
// A certificate on the deny list (--station-deny, e.g. one a `keys roll station-tls` retired while its key
// stays on the token) no longer passes either (docs/api.md, "Retired station certificates").
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <botan/x509cert.h>

namespace keyline::core {
class LogSink;
}

namespace keyline::backupdb {

// The station certificates that may no longer publish, as --station-deny FILE lists them: one entry a
// line, '#' starts a comment, blank lines are skipped. An entry is either
//   sha256:HEX                     the SHA-256 fingerprint of the certificate's DER (64 hex digits;
//                                  "sha256:" optional, colons and case free, openssl's
//                                  "sha256 Fingerprint=AB:CD:..." taken as it prints it)
//   issuer-serial ISSUER SERIAL    the serial number (hex) of a certificate of the issuer whose
//                                  certificate (one of --station-ca) has SHA-256 fingerprint ISSUER
struct StationDenyList {
  std::set<std::string> fingerprints;                           // raw 32 bytes
  std::set<std::pair<std::string, std::string>> issuer_serials;  // raw issuer fingerprint, serial bytes (no leading 0)
  std::size_t size() const { return fingerprints.size() + issuer_serials.size(); }
};

// Throws core::ConfigError(Config) naming `what` and the first line that is no entry.
StationDenyList parse_station_deny(const std::string& text, const std::string& what);

struct StationCheck {
  bool allowed = false;
  int status = 403;
  std::string slug;        // problem type (docs/api.md): not-a-station, certificate-expired
  std::string detail;      // generic, for the wire: no DN, no library text
  std::string station_id;  // when allowed: the subject CN
  std::string log_detail;  // the specific reason, for the log only; when allowed "station ID serial S sha256 F"
};

// Thread-safe. A certificate that passed the profile and the signature check is remembered by the
// SHA-256 of its exact DER (at most kMaxRemembered, oldest dropped first), so a station's repeated
// publishes cost a lookup instead of an ECDSA verification; its validity period is compared with `now`
// on every call. Refusals for profile or signature are remembered too (at most kMaxRefused), so a client
// repeating one foreign certificate over a keep-alive connection does not buy a verification per request.
// The deny list is consulted after that memory on every call, so a certificate accepted before is refused
// from the moment its entry is loaded.
class StationAuthority {
 public:
  static constexpr std::size_t kMaxRemembered = 1024;
  static constexpr std::size_t kMaxRefused = 256;

  explicit StationAuthority(std::vector<Botan::X509_Certificate> station_issuers);
  ~StationAuthority();
  StationAuthority(StationAuthority&&) noexcept;
  StationAuthority& operator=(StationAuthority&&) noexcept;

  StationCheck check(const std::vector<std::uint8_t>& peer_der, std::chrono::system_clock::time_point now) const;

  // Reads the deny list from `file` now (throws core::ConfigError when it is missing or does not parse:
  // the server does not start without the list it was told to enforce) and again whenever its mtime,
  // size or inode changed, looked at by check() at most once a second. A reload that fails (the file
  // gone, unreadable, a line that is no entry) keeps the list in force and writes an error line to
  // `log` (may be null); a good one writes an info line.
  void deny_from(const std::string& file, core::LogSink* log);
  std::size_t denied_entries() const;

 private:
  struct Verdict;
  struct Cache;
  struct Deny;
  Verdict examine(const std::vector<std::uint8_t>& der) const;

  std::vector<Botan::X509_Certificate> m_issuers;
  std::vector<std::string> m_issuer_digests;  // SHA-256 of each issuer's DER, for issuer-serial entries
  std::unique_ptr<Cache> m_cache;  // behind a pointer so the authority can move (the mutex cannot)
  std::unique_ptr<Deny> m_deny;    // null without --station-deny
};

// The station issuers from a PEM file: at least one certificate, each a CA with keyCertSign; with
// `deny_file` not empty, its deny list (StationAuthority::deny_from, errors logged to `log`).
// Throws core::ConfigError(Config) when a file is unreadable or unusable.
StationAuthority load_station_authority(const std::string& pem_file, const std::string& deny_file = {},
                                        core::LogSink* log = nullptr);

}  // namespace keyline::backupdb
