// Inside the device agent (kps_agent.cpp, kps_daemon.cpp): the device's keys, a KPS session whose
// every answer is checked against the pinned KPS signing key, and the handling of one notice.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <botan/pk_keys.h>
#include <botan/system_rng.h>
#include <botan/x509cert.h>

#include "keyline/core/data_package.h"
#include "keyline/core/http.h"
#include "keyline/device/kps_agent.h"

namespace keyline::device::kps {

// What the agent needs from the personalized device: opened from flash with the chip key, exactly as
// at boot (every boot check runs first).
struct DeviceKeys {
  core::ChipId chip_id;
  std::vector<Botan::X509_Certificate> roots;
  core::DataPackage pkg;
  std::unique_ptr<Botan::Private_Key> identity_key;
  std::vector<core::Bytes> chain_der;  // identity certificate, then its issuers
};
DeviceKeys open_device(const std::filesystem::path& dir);

// One connection to the KPS. Every request is signed (core/device_auth.h); every answer must carry
// the KPS's RFC 9421 signature over its status and Content-Digest, bound with ;req to this request's
// Keyline-Signature and Keyline-Nonce, made with the pinned key (KpsClientConfig::kps_key). Anything
// else is Error(KpsNotAuthentic) before the caller sees the answer.
class Session {
 public:
  Session(const KpsClientConfig& c, const DeviceKeys& keys, int io_timeout_s = 30);
  core::http::Response get(const std::string& path);
  core::http::Response post(const std::string& path, const std::string& body, const std::string& ctype);
  std::int64_t now() const;

 private:
  core::http::Response checked(const std::string& method, const std::string& path, const std::string* body,
                               const std::string& ctype);

  const DeviceKeys& m_keys;
  std::int64_t m_clock_offset_s;
  std::unique_ptr<Botan::Public_Key> m_kps_key;
  Botan::System_RNG m_rng;
  core::http::Client m_client;
};

struct Notice {
  std::string id, reason, uri, transfer_id;
};
// GET /v1/notifications[?wait=N]: the unacknowledged notices, oldest first.
std::vector<Notice> pending(Session& s, int wait_s);
void ack(Session& s, const Notice& n);

// The roles a command plays. serve-once: Source; receive: Target; the daemon: both.
enum Role : unsigned { Source = 1, Target = 2 };
// Handles one notice if it belongs to one of `roles`: returns "delivered", "received", "refused",
// "skipped" or "noted" (and acks it), or "" for a notice this command does not handle (not acked).
// Throws core::Error when handling fails (the notice stays for the next pass).
std::string handle(Session& s, const DeviceKeys& keys, const KpsClientConfig& c, const Notice& n, unsigned roles);

}  // namespace keyline::device::kps
