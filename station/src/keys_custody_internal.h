// What the custody files (keys_custody*.cpp) share. Private to the station library.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "keyline/core/pkcs11.h"
#include "keyline/core/pq.h"
#include "keyline/station/config.h"
#include "keyline/station/custody.h"

namespace keyline::station::custody {

// The station database, migrated. Custody is audited there: without one, nothing is done.
core::pq::Connection open_db(const StationConfig& config, const char* what);
std::shared_ptr<core::Pkcs11Token> open_token(const StationConfig& config);
// One journal.audit row (cert_kind "custody", no chip, no IMEI); returns its id. Never key material in
// `detail`.
std::int64_t audit(core::pq::Connection& db, const StationConfig& config, const std::string& event,
                   const std::string& detail);
// A custody operation as the ceremony log takes it (docs/ceremony.md "Custody statements").
struct Statement {
  std::string event, detail;
  std::string result, outcome;  // done | failed; what it did, or why it failed
  std::string begin, end;       // UTC
  std::int64_t audit_begin = 0, audit_end = 0;  // its journal.audit rows
};
std::string utc_now_text();
// <pki_dir>/custody/<time>-<event>-<id>.stmt, signed by the station TLS key (keyline-custody-statement-v1).
// A statement that cannot be signed or written is said on stderr: the operation itself is done and
// audited in the station database.
void write_statement(const StationConfig& config, const Statement& st);
std::string statement_text(core::Pkcs11Token& token, const StationConfig& config, const Statement& st,
                           const std::string& id);
// Runs `step` between "<event>.begin" and "<event>.done" rows; when it throws, a "<event>.failed" row
// names why and the error goes on.
void audited(core::pq::Connection& db, const StationConfig& config, const std::string& event,
             const std::string& detail, const std::function<std::string()>& step);
[[noreturn]] void refuse(const std::string& why);
// The version a master label names (1 for "keyline-master"), 0 for any other label.
int version_of_label(const std::string& label);
core::Bytes version_id(int version);  // CKA_ID: 4 bytes big-endian

}  // namespace keyline::station::custody

#include <vector>

#include <botan/x509cert.h>

namespace keyline::station::custody {

// "signature=<base64 DER ECDSA>\n" over `signed_part` by the station TLS key on the token.
std::string signature_line(core::Pkcs11Token& token, const StationConfig& config, const std::string& signed_part);
core::Bytes decode_base64(const std::string& text, const char* what);  // throws FormatError
// station-tls.pem of this station's PKI directory (leaf first).
std::vector<Botan::X509_Certificate> own_station_chain(const StationConfig& config);
// The peer's leaf, once it chains to this station's root.pem, is of the station profile and names
// `claimed_station`. Refuses (CustodyRefused) otherwise.
Botan::X509_Certificate check_peer_station(const std::vector<Botan::X509_Certificate>& chain,
                                           const StationConfig& config, const std::string& claimed_station);
void check_signature(const SignedText& text, const Botan::X509_Certificate& cert);  // refuses when it fails

}  // namespace keyline::station::custody
