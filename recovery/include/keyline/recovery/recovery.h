// The owner's recovery tool (issue #6, docs/design.md section 2): brings back a device whose flash was lost
// from its public backup record. The device opens the backup with its chip key; nothing secret
// passes through this tool. docs/recovery.md is the owner's guide.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <botan/x509cert.h>

#include "keyline/core/apdu.h"
#include "keyline/core/bytes.h"
#include "keyline/core/cplc.h"
#include "keyline/core/imei.h"
#include "keyline/core/record.h"
#include "keyline/recovery/log_check.h"

namespace keyline::core::http {
class Client;
}

namespace keyline::recovery {

// Where the public DB is and how hard to try reaching it.
struct DbOptions {
  std::string url;      // "https://host:port" (plain "http://" behind a TLS-terminating proxy)
  std::string ca_file;  // TLS trust file for https (not the device trust anchor)
  int attempts = 4;     // connection attempts before "unreachable"
  std::chrono::milliseconds backoff{250};  // doubled after each failed attempt
  std::chrono::milliseconds timeout{10000};
};

struct RestoreOptions {
  std::string device;      // HOST:PORT of the device link (vpcd framing over TCP); or
  std::string reader;      // a PC/SC reader: a pattern (core::pcsc::match_readers) matching exactly one reader
  DbOptions db;            // used when bundle is empty
  LogOptions log;          // the transparency-log check of a record fetched from db (not of a bundle)
  std::string bundle;      // offline bundle (from fetch); no network then
  std::string trust_file;  // manufacturer root(s), PEM: the anchor of device certificates
  bool dry_run = false;    // verify and print, write nothing
  std::chrono::milliseconds device_timeout{30000};
  std::chrono::milliseconds card_wait{10000};  // how long a matched reader without a card is waited for
};

struct RestoreResult {
  core::ChipId chip_id;
  core::Imei imei = core::Imei::parse("490154203237518");
  std::string record_hash;
  std::string identity_key_sha256;   // from the certificate (dry run) or the device's boot answer
  std::string transport_key_sha256;  // only from the device's boot answer (empty on a dry run)
  std::size_t image_size = 0;
  bool written = false;
  std::string source;  // the DB URL or the bundle path
};

// Verifies everything before the first write (chain to the anchors, chip ID read from the device =
// record = certificate = backup header, IMEI in the certificate = record = the device's fuse, and the
// device opens the backup in a restore drill), then writes the flash image into staging with
// UPDATE BINARY and boots it. Progress lines go to `progress` (may be null).
// Throws core::Error with the codes of errors.h (or core codes for bad settings).
RestoreResult restore(const RestoreOptions& options, std::ostream* progress);

struct FetchOptions {
  std::string chip_id;
  DbOptions db;
  std::string out;         // bundle file to write
  std::string trust_file;  // optional: verify the record before writing the bundle
  LogOptions log;          // the record must be in the log before the bundle is written
};

// Fetches the record of a chip, checks it is in the log (options.log), and writes it as served, with
// the log's evidence as a "log" member (bundle_with_log), to `out` (the offline bundle).
core::Record fetch(const FetchOptions& options, std::ostream* progress);

// --- parts, public for the tests ----------------------------------------------------------------

// Throws ConfigError(Usage) unless exactly one of options.device / options.reader is given (and
// --device is no "pcsc:" address): checked before anything is read or reached.
void check_device_choice(const RestoreOptions& options);

// The device address of exactly one of options.device / options.reader: "HOST:PORT", or
// "pcsc:READER" for the one reader the pattern matches, once a card is in it (waited for up to
// card_wait, said on `progress`). Throws ConfigError(Usage) for none, both, or a pattern matching
// several readers (naming them); IoError(PcscNoService | PcscNoReader | PcscCardMute |
// PcscReaderRemoved) as core::pcsc says, PcscNoReader naming the readers there are.
std::string device_address(const RestoreOptions& options, std::ostream* progress);

// The public DB client (checks the URL, reads the TLS trust file). Throws ConfigError.
std::unique_ptr<core::http::Client> make_db_client(const DbOptions& db);

// GET /v1/records/{chip_id}: the record JSON as served. Throws NoRecord, DbUnavailable, DbRefused.
std::string fetch_record_json(const DbOptions& db, const core::ChipId& chip_id);

// Parses an offline bundle's text. Throws BadBundle naming the reason.
core::Record parse_bundle(const std::string& text, const std::string& name);

// The checks that need no device: record chip ID = device chip ID, then core::validate_record.
// Throws VerificationFailed naming the first check that failed.
void verify_record(const core::Record& record, const core::ChipId& device_chip,
                   const std::vector<Botan::X509_Certificate>& anchors);

// UPDATE BINARY commands that write `image` into the staging area from offset 0: short APDUs of at
// most 255 data bytes, offset in P1 (7 bits) || P2 (ISO 7816-4 section 11.3.5; P1 bit 8 = 0 means
// an offset, not a short EF identifier). Throws VerificationFailed when the image does not fit.
std::vector<core::CommandApdu> update_binary_commands(const core::Bytes& image);

// The BOOT STAGED answer: IMEI (15 ASCII) || SHA-256 identity key (32) || SHA-256 transport key (32),
// exactly 79 bytes (core::applet::parse_boot_answer refuses any other length).
struct BootAnswer {
  core::Imei imei = core::Imei::parse("490154203237518");
  std::string identity_key_sha256;
  std::string transport_key_sha256;
};
BootAnswer parse_boot_answer(const core::SecureBytes& data);

// SHA-256 of the certificate's subject public key bits (the uncompressed EC point), upper-case hex:
// what the device reports as identity_key_sha256.
std::string key_fingerprint(const Botan::X509_Certificate& cert);

// "key value" lines, or one JSON object.
std::string format_result(const RestoreResult& r, bool json);

// The program boundary: runs body, prints "keyline-recovery: error N: reason" and maps the exit code.
int run_guarded(const std::function<int()>& body) noexcept;

}  // namespace keyline::recovery
