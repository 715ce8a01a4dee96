// Key custody (issue #14, docs/custody.md): the master key in versions, mirrored between station tokens
// under dual control, exported to a new host, and listed with every other key and certificate.
//
//   version 1     "keyline-master": the token's own HMAC key, CKA_EXTRACTABLE false (final), never moves
//   version N>=2  "keyline-master-vN" (CKA_ID = N, 4 bytes big-endian): made by `keys roll master`,
//                 AES-256, sensitive, CKA_EXTRACTABLE true with CKA_WRAP_WITH_TRUSTED true, CKA_DERIVE only
//                 (derivation v2, core/scp03_session.h "Version 2", docs/service.md)
//
// Mirroring (docs/custody.md "Dual control"): the receiving token's user makes an RSA-3072 receiving
// key and writes a request signed by its station key; the sending token's Security Officer checks that
// request and marks its public key trusted on the sending token (only the SO can set CKA_TRUSTED); the
// sending token's user wraps the master under it (CKM_RSA_PKCS_OAEP) with a signed manifest; the receiver
// checks the manifest and unwraps. Every step writes audit rows before and after (journal.audit) and
// refuses when the station database is not configured.
#pragma once

#include <map>
#include <ostream>
#include <string>

#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"
#include "keyline/core/error.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/signed_text.h"
#include "keyline/station/config.h"

namespace keyline::station {

namespace errc {
// A custody step refused: a request or manifest that does not verify, names another token, was changed,
// or was imported before; a master version that cannot move. Nothing was created or imported.
constexpr auto CustodyRefused = static_cast<core::ErrorCode>(4034);
// A request or manifest file that does not parse (docs/custody.md "Files").
constexpr auto CustodyBadFile = static_cast<core::ErrorCode>(4035);
}  // namespace errc

// "keyline-master" for version 1, "keyline-master-v<N>" above.
std::string master_label(int version);
// The highest master version on the token (1 when only "keyline-master" is there, 0 when none).
int newest_master_version(core::Pkcs11Token& token);
// Seed 002 communication key, inside the token; a device keeps the version it was made with.
//   version 1:  HMAC-SHA-256(keyline-master, "keyline/comm/v1" || IMEI) (`chip` unused)
//   version 2+: AES-256-ECB(master vN, core::scp::comm_derivation_data_v2(chip)) by CKM_AES_ECB_ENCRYPT_DATA
//               into a session object whose value is read and which is destroyed before returning.
core::SecureBytes derive_comm_key(core::Pkcs11Token& token, const std::string& imei, const core::ChipId& chip,
                                  int version);
// First 8 bytes in hex of HMAC-SHA-256(master v1, "keyline/master-check/v1"), or for version 2+ of
// AES-256-ECB(master vN, SHA-256("keyline/master-check/v2")): names a master version without revealing
// it, so two tokens (and the secret DB) can be compared.
std::string master_check_value(core::Pkcs11Token& token, int version);

// The signed text files of a mirror (docs/custody.md "Files"; the format: core/signed_text.h). Throws
// core::FormatError(CustodyBadFile) naming what is wrong, as the parsed text's field() does.
using SignedText = core::SignedText;
SignedText parse_signed_text(const std::string& text, const std::string& magic);

struct CustodyRequest {
  std::string so_pin_file;  // `keys mirror trust`: else KEYLINE_HSM_SO_PIN_FILE or KEYLINE_HSM_SO_PIN
  std::string request_file; // receive-init's output
  std::string out_file;
  std::string in_file;
  std::string from_cert;    // the sending station's certificate (PEM, chain allowed)
  int version = 0;          // 0: the newest mirrorable one
  std::string imei;         // `keys check`
  std::string chip;         // `keys check` of version 2+: the chip ID (20 hex digits)
  bool json = false;
};

// Each writes what it did on `out` and throws core::Error (CustodyRefused, KeysMissing, ConfigError...).
void keys_roll_master(const StationConfig& config, std::ostream& out);
void mirror_receive_init(const StationConfig& config, const CustodyRequest& request, std::ostream& out);
void mirror_trust(const StationConfig& config, const CustodyRequest& request, std::ostream& out);
// op: "mirror" (`keys mirror send` / `receive`) or "export" (`keys export` / `import`): the same steps,
// named apart in the audit and the transfer table (docs/custody.md "Export and import").
void mirror_send(const StationConfig& config, const CustodyRequest& request, const std::string& op, std::ostream& out);
void mirror_receive(const StationConfig& config, const CustodyRequest& request, const std::string& op,
                    std::ostream& out);
void keys_status(const StationConfig& config, bool json, std::ostream& out);
// The communication key check value (core::key_check_value, what secret.device.comm_key_kcv holds) of
// one IMEI (version 1) or chip (version 2+, --chip) under one master version: compares two stations' mirrors without a device.
void keys_check(const StationConfig& config, const CustodyRequest& request, std::ostream& out);

}  // namespace keyline::station
