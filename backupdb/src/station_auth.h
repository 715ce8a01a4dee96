// Who may publish to the public DB (docs/api.md, docs/decisions.md "Station certificate profile"):
// a client certificate with the station profile (core::read_station_id: EKU exactly clientAuth, the
// keyline station policy, OU=keyline station, CN=<station id>) signed by one of the configured station
// issuers (--station-ca) and valid now. A server certificate of the same CA (serverAuth) never passes.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <botan/x509cert.h>

namespace keyline::backupdb {

struct StationCheck {
  bool allowed = false;
  int status = 403;
  std::string slug;        // problem type (docs/api.md): not-a-station, certificate-expired
  std::string detail;      // generic, for the wire: no DN, no library text
  std::string station_id;  // when allowed: the subject CN
  std::string log_detail;  // the specific reason, for the log only
};

// Thread-safe. A certificate that passed the profile and the signature check is remembered by the
// SHA-256 of its exact DER (at most kMaxRemembered, oldest dropped first), so a station's repeated
// publishes cost a lookup instead of an ECDSA verification; its validity period is compared with `now`
// on every call. Refusals for profile or signature are remembered too (at most kMaxRefused), so a client
// repeating one foreign certificate over a keep-alive connection does not buy a verification per request.
class StationAuthority {
 public:
  static constexpr std::size_t kMaxRemembered = 1024;
  static constexpr std::size_t kMaxRefused = 256;

  explicit StationAuthority(std::vector<Botan::X509_Certificate> station_issuers);
  ~StationAuthority();
  StationAuthority(StationAuthority&&) noexcept;
  StationAuthority& operator=(StationAuthority&&) noexcept;

  StationCheck check(const std::vector<std::uint8_t>& peer_der, std::chrono::system_clock::time_point now) const;

 private:
  struct Verdict;
  struct Cache;
  Verdict examine(const std::vector<std::uint8_t>& der) const;

  std::vector<Botan::X509_Certificate> m_issuers;
  std::unique_ptr<Cache> m_cache;  // behind a pointer so the authority can move (the mutex cannot)
};

// The station issuers from a PEM file: at least one certificate, each a CA with keyCertSign.
// Throws core::ConfigError(Config) when the file is unreadable or unusable.
StationAuthority load_station_authority(const std::string& pem_file);

}  // namespace keyline::backupdb
