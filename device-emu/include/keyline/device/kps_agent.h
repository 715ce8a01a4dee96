// The device's side of the key provisioning server (docs/kps.md, v2): application keys kept in the
// device's secret storage, and the agent that moves them through keyline-kps. It runs in the device's
// own process, so the user key and the transport private key never leave keyline-device; the KPS only
// ever sees the target's public transport certificate and a KLKE envelope (core/kps_envelope.h): an
// HPKE ciphertext (RFC 9180) sealed to the target and signed by the source's identity key. Every KPS
// answer must carry the KPS's RFC 9421 signature bound to the device's own request
// (core/http_signature.h); the agent refuses any other.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"
#include "keyline/core/error.h"

namespace keyline::device {

namespace error {
constexpr core::ErrorCode KeyExists = static_cast<core::ErrorCode>(2010);   // a different key holds the label
constexpr core::ErrorCode NoSuchKey = static_cast<core::ErrorCode>(2011);   // no key under the label
constexpr core::ErrorCode BadLabel = static_cast<core::ErrorCode>(2012);    // label outside [A-Za-z0-9._-]{1,64}
constexpr core::ErrorCode KpsProtocol = static_cast<core::ErrorCode>(2020); // the KPS answered something unexpected
constexpr core::ErrorCode KpsNotAuthentic = static_cast<core::ErrorCode>(2021);  // unsigned, forged or moved answer
constexpr core::ErrorCode PolicyRefused = static_cast<core::ErrorCode>(2022);    // the device's own policy refuses
}  // namespace error

// Application keys: secure/keys/<label>.key, 32 bytes, mode 0600, like the chip key.
std::filesystem::path user_key_path(const std::filesystem::path& dir, const std::string& label);
// A fresh random 32-byte key. Throws Error(KeyExists) when the label is taken.
void create_user_key(const std::filesystem::path& dir, const std::string& label);
core::SecureBytes load_user_key(const std::filesystem::path& dir, const std::string& label);
// Stores a received key; storing the same key again is fine, a different one is Error(KeyExists).
void store_user_key(const std::filesystem::path& dir, const std::string& label, const core::SecureBytes& key);

struct KpsClientConfig {
  std::string dir;      // the device
  std::string url;      // https://HOST:PORT of keyline-kps
  std::string ca;       // CA file that issued the KPS server certificate
  std::string kps_key;  // the KPS signing public key (PEM, kps-sign.pub.pem) every answer must verify with
  // Test-only simulated clock (KEYLINE_DEVICE_CLOCK_OFFSET): shifts the request timestamps and the
  // answer freshness check by this many seconds, to pair with the KPS's --clock-offset-s.
  std::int64_t clock_offset_s = 0;
};

// The source's own policy, D/secure/kps-policy: lines "allow TARGETCHIP|* LABELGLOB" (glob: * and ?).
// No file, or no line that matches, refuses the transfer: the source decides for its own keys before
// it seals, whatever the KPS allowed.
bool device_policy_allows(const std::filesystem::path& dir, const core::ChipId& target, const std::string& label);
// Appends a rule; throws Error(Usage) for a target that is not a chip ID or *, or a bad glob.
void add_device_policy(const std::filesystem::path& dir, const std::string& target, const std::string& label_glob);

// Target: asks the KPS for `label` from `source_chip` (E1/T2; the KPS takes the transport certificate
// from the public DB). Records the request in D/secure/kps-requests/ID so the delivered envelope is
// checked against what this device asked for. Prints and returns the transfer id. A refusal by the
// KPS is Error(Http) (exit 5).
std::string kps_request(const KpsClientConfig& c, const std::string& source_chip, const std::string& label);
// Source: one pass over its unacknowledged notices; each transfer-requested one is answered: its own
// policy for (target, label), the target's transport certificate against the ROM root and chip, seal,
// sign (KLKE) and upload (E4/E5). Acks only the notices it handled. Returns how many keys it delivered.
int kps_serve_once(const KpsClientConfig& c);
// Target: one pass; each key-delivered notice is fetched, its envelope checked (source chain to the
// ROM root, source chip, id, label, target) and opened, the key stored and the transfer acknowledged
// (E8-E10). Acks only the notices it handled. Returns how many.
int kps_receive(const KpsClientConfig& c);
// Target, offline: opens a KLKE envelope from a file (for transfer_id, label, and source_chip unless
// empty) and stores it.
void kps_open_file(const std::string& dir, const std::string& file, const std::string& transfer_id,
                   const std::string& label, const std::string& source_chip = {});

struct KpsAgentOptions {
  int wait_s = 30;                // long-poll wait, 0..30
  bool once = false;              // one poll and its notices, then exit
  int max_backoff_ms = 30000;     // reconnect backoff ceiling (starts at 250 ms, doubles)
};
// The daemon: long-polls notices, serves (source) and receives (target), acks what it handled,
// reconnects with backoff when the KPS is down or answers 5xx, and returns 0 on SIGTERM/SIGINT.
// An answer that is not authentic is logged and retried like a failure: nothing is acked on it.
// With once: one poll; exit 1 when a notice failed (its error on stderr), the failure rethrown when
// the poll itself failed.
int kps_agent(const KpsClientConfig& c, const KpsAgentOptions& o);

int cmd_key_new(const std::string& dir, const std::string& label);
int cmd_key_kcv(const std::string& dir, const std::string& label);
// keyline-device kps request|serve-once|receive|open-file: the calls above plus a summary line.
int cmd_kps_request(const KpsClientConfig& c, const std::string& source_chip, const std::string& label);
int cmd_kps_serve_once(const KpsClientConfig& c);
int cmd_kps_receive(const KpsClientConfig& c);
int cmd_kps_open_file(const std::string& dir, const std::string& file, const std::string& transfer_id,
                      const std::string& label, const std::string& source_chip);
int cmd_kps_agent(const KpsClientConfig& c, const KpsAgentOptions& o);
int cmd_kps_policy_add(const std::string& dir, const std::string& target, const std::string& label_glob);

}  // namespace keyline::device
