// SCP03 proper (GlobalPlatform Card Specification v2.3 Amendment D): INITIALIZE UPDATE and EXTERNAL
// AUTHENTICATE on both sides, for the device service server's channel to shipped devices (issue #16,
// docs/service.md). The secure messaging after the handshake is core/scp03.h's SecureMessaging.
//
// keyline's choices (docs/service.md): AES-128 static keys, S16 mode (16-byte challenges, cryptograms
// and MACs), "i" = 71 (R-MAC, R-ENC, S16 and a pseudo-random card challenge, Amendment D section
// 6.2.2.1: the card's sequence counter makes a recorded script useless), security level 33,
// KVN = the derivation version (1 or 2), KDD = the chip ID (10 bytes).
//
// The host never needs the static keys in memory: every CMAC the host computes with a static key goes
// through `StaticCmac`, which the service server runs on its token (CKM_AES_CMAC with a key derived in
// the token, never extractable); only the session keys it returns live in the process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "keyline/core/apdu.h"
#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"
#include "keyline/core/scp03.h"

namespace keyline::core::scp {

// Which static key a CMAC uses.
enum class StaticKey { Enc, Mac, Dek };
// AES-CMAC(static key `which`, data), 16 bytes.
using StaticCmac = std::function<Bytes(StaticKey which, const Bytes& data)>;

// scp03_kdf/derive_scp03_session with the static keys behind `cmac` (the KDF's PRF is AES-CMAC keyed
// with the static key, Amendment D section 4.1.5; for AES-256 static keys the PRF runs twice).
// `dek` of the result is the session DEK below (not the static DEK, which the host never holds).
SessionKeys derive_scp03_session(const StaticCmac& cmac, std::size_t key_len, const Bytes& host_challenge,
                                 const Bytes& card_challenge);
// keyline's key transport key for PUT KEY (docs/service.md "The device side"): SCP03 has no session
// DEK, and the host cannot encrypt under the static DEK it never holds, so S-DEK =
// scp03_kdf(K-DEK, kdf_constant_s_dek, host challenge || card challenge, 8 * key_len) - computable
// through StaticCmac. 0x80 is outside the constants Amendment D section 4.1.5 assigns.
constexpr std::uint8_t kdf_constant_s_dek = 0x80;
SecureBytes derive_session_dek(const StaticCmac& cmac, std::size_t key_len, const Bytes& host_challenge,
                               const Bytes& card_challenge);
// The software StaticCmac over static keys held in memory (the device; derivation version 1 hosts).
StaticCmac software_cmac(const Scp03StaticKeys& keys);

// --- derivation of a device's static keys (docs/service.md "Key derivation") ------------------
// Version 1: comm = HMAC-SHA-256(master v1, "keyline/comm/v1" || IMEI) (the station's DGI 8103 since
//            wave 1); the static keys derive from comm in software on both sides (legacy: the host
//            holds comm in memory, documented).
// Version 2: comm = AES-256-ECB(master v2, SHA-256("keyline/comm/v2" || chip ID)), 32 bytes — on a token
//            CKM_AES_ECB_ENCRYPT_DATA over that 32-byte data from a DERIVE-only AES-256 master;
//            K-ENC, K-MAC, K-DEK = AES-256-ECB(comm, diversifier) for the 16-byte diversifiers below — on
//            a token CKM_AES_ECB_ENCRYPT_DATA again from comm (DERIVE only), giving AES-128 keys usable
//            with CKM_AES_CMAC (SIGN only, never extractable).
// The device has comm in its data package (DGI 8103) and computes the same static keys in software.
Bytes comm_derivation_data_v2(const ChipId& chip);  // SHA-256("keyline/comm/v2" || chip ID)
Bytes static_key_diversifier(StaticKey which);      // 16 bytes, one per key (docs/service.md names them)
Scp03StaticKeys static_keys_from_comm(const SecureBytes& comm);  // AES-256-ECB(comm, diversifier) each

// --- the handshake ------------------------------------------------------------------------------
constexpr std::uint8_t kInsInitializeUpdate = 0x50;
constexpr std::uint8_t kInsExternalAuthenticate = 0x82;

// 80 50 KVN 00 Lc host challenge 00
CommandApdu initialize_update_command(std::uint8_t kvn, const Bytes& host_challenge);
struct InitializeUpdateAnswer {
  Bytes kdd;              // 10 bytes: the chip ID
  std::uint8_t kvn = 0;
  std::uint8_t scp = 0x03;
  std::uint8_t i = 0;     // 70 (S8) or 71 (S16): R-MAC, R-ENC, pseudo-random challenge
  Bytes card_challenge;   // 8 or 16
  Bytes card_cryptogram;  // 8 or 16
  Bytes sequence_counter; // 3
};
// Exact layout (Amendment D section 7.1.1.2). Throws FormatError(BadApdu).
InitializeUpdateAnswer parse_initialize_update_answer(const std::uint8_t* data, std::size_t len);
Bytes encode_initialize_update_answer(const InitializeUpdateAnswer& a);

// Host: checks the card cryptogram (constant time) and returns the EXTERNAL AUTHENTICATE command at
// kFullLevel plus the session ready for wrap_command. Throws SecureChannelError for a wrong cryptogram.
struct HostAuthenticate {
  CommandApdu external_authenticate;
  SecureMessaging session;
};
HostAuthenticate host_authenticate(const SessionKeys& keys, const Bytes& host_challenge,
                                   const InitializeUpdateAnswer& answer, std::size_t mac_len);

// Card: answers INITIALIZE UPDATE. The pseudo-random card challenge is
// scp03_kdf(K-ENC, 02, sequence counter || AID, 8 * mac_len) (Amendment D section 6.2.2.1); the counter
// is the card's, incremented durably by the caller before each answer, so no two sessions repeat.
struct CardInitialize {
  InitializeUpdateAnswer answer;
  SessionKeys keys;
};
CardInitialize card_initialize(const Scp03StaticKeys& keys, std::uint8_t kvn, const ChipId& kdd,
                               const Bytes& host_challenge, std::uint32_t sequence_counter, const Bytes& aid,
                               std::size_t mac_len);
// Card: checks EXTERNAL AUTHENTICATE (security level exactly kFullLevel, host cryptogram, C-MAC) and
// returns the session. Throws SecureChannelError.
SecureMessaging card_authenticate(const CardInitialize& init, const Bytes& host_challenge,
                                  const CommandApdu& external_authenticate, std::size_t mac_len);

// --- PUT KEY of a new communication key (docs/protocol.md "Service channel commands") ------------
// 80 D8 <current KVN> 81 Lc  new KVN || 88 || 20 || AES-CBC(S-DEK, zero ICV, comm) (32) || 03 || KCV (3),
// KCV = core::key_check_value(comm) (first 3 bytes of AES-256-ECB(comm, 00..00)). Sent wrapped.
constexpr std::uint8_t kInsPutKey = 0xD8;
CommandApdu put_comm_key_command(const SecureBytes& s_dek, std::uint8_t current_kvn, std::uint8_t new_kvn,
                                 const SecureBytes& new_comm);
struct PutCommKey {
  std::uint8_t new_kvn = 0;
  SecureBytes comm;  // 32 bytes
};
// The card's parse of the unwrapped command: exact layout, KCV checked. Throws FormatError(BadApdu).
PutCommKey parse_put_comm_key(const SecureBytes& s_dek, const CommandApdu& plain);

}  // namespace keyline::core::scp
