// The device's side of the key provisioning server (docs/kps.md): application keys kept in the
// device's secret storage, and the agent that moves them through keyline-kps. It runs in the device's
// own process, so the user key and the transport private key never leave keyline-device; the KPS only
// ever sees the target's public transport certificate and an HPKE ciphertext (RFC 9180) sealed to it.
#pragma once

#include <filesystem>
#include <string>

#include "keyline/core/bytes.h"
#include "keyline/core/error.h"

namespace keyline::device {

namespace error {
constexpr core::ErrorCode KeyExists = static_cast<core::ErrorCode>(2010);   // a different key holds the label
constexpr core::ErrorCode NoSuchKey = static_cast<core::ErrorCode>(2011);   // no key under the label
constexpr core::ErrorCode BadLabel = static_cast<core::ErrorCode>(2012);    // label outside [A-Za-z0-9._-]{1,64}
constexpr core::ErrorCode KpsProtocol = static_cast<core::ErrorCode>(2020); // the KPS answered something unexpected
}  // namespace error

// HPKE info and the associated data of a sealed key: the transfer id binds the ciphertext to the one
// transfer it was made for (a ciphertext replayed into another transfer does not open).
constexpr const char* kKpsHpkeInfo = "keyline/kps/v1";

// Application keys: secure/keys/<label>.key, 32 bytes, mode 0600, like the chip key.
std::filesystem::path user_key_path(const std::filesystem::path& dir, const std::string& label);
// A fresh random 32-byte key. Throws Error(KeyExists) when the label is taken.
void create_user_key(const std::filesystem::path& dir, const std::string& label);
core::SecureBytes load_user_key(const std::filesystem::path& dir, const std::string& label);
// Stores a received key; storing the same key again is fine, a different one is Error(KeyExists).
void store_user_key(const std::filesystem::path& dir, const std::string& label, const core::SecureBytes& key);

struct KpsClientConfig {
  std::string dir;  // the device
  std::string url;  // https://HOST:PORT of keyline-kps
  std::string ca;   // CA file that issued the KPS server certificate
};

// Target: asks the KPS for `label` from `source_chip`, naming its own transport certificate (E1/T2).
// Prints and returns the transfer id. A refusal by the KPS is Error(Http) (exit 5).
std::string kps_request(const KpsClientConfig& c, const std::string& source_chip, const std::string& label);
// Source: one pass over its unread notifications; each transfer request is answered by checking the
// target's transport certificate against the ROM root, sealing the key to it and uploading (E4/E5).
// Returns how many keys were delivered.
int kps_serve_once(const KpsClientConfig& c);
// Target: one pass over its unread notifications; each delivered key is fetched, opened with the
// transport private key, stored under its label and acknowledged (E8-E10). Returns how many.
int kps_receive(const KpsClientConfig& c);
// Target, offline: opens a sealed key from a file (the transfer id is the associated data) and stores it.
void kps_open_file(const std::string& dir, const std::string& file, const std::string& transfer_id,
                   const std::string& label);

int cmd_key_new(const std::string& dir, const std::string& label);
int cmd_key_kcv(const std::string& dir, const std::string& label);
// keyline-device kps request|serve-once|receive|open-file: the calls above plus a summary line.
int cmd_kps_request(const KpsClientConfig& c, const std::string& source_chip, const std::string& label);
int cmd_kps_serve_once(const KpsClientConfig& c);
int cmd_kps_receive(const KpsClientConfig& c);
int cmd_kps_open_file(const std::string& dir, const std::string& file, const std::string& transfer_id,
                      const std::string& label);

}  // namespace keyline::device
