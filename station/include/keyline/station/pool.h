// The temporary secure database (seed 002, database 140): IMEIs of the line's TAC ranges and
// pre-generated device keys, wrapped by the token before they are stored. Claims happen inside the
// personalization transaction (personalize.cpp) with FOR UPDATE SKIP LOCKED, deleting the rows.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "keyline/core/cplc.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/pq.h"

namespace keyline::station {

// Wrapped device keys are bound to their row (docs/decisions.md, "Wrapped keys are bound to their
// row"): the AES-GCM associated data of a blob names its table, its row (the pool row's id, or the
// chip of a journal row) and the public half it belongs to, so a blob copied into another row, or
// beside another public half, does not unwrap.
enum class KeyKind : std::uint8_t { Identity = 1, Transport = 2 };
core::Bytes pool_key_aad(std::int64_t pool_id, KeyKind kind, const core::Bytes& public_half);
core::Bytes journal_key_aad(const core::ChipId& chip, KeyKind kind, const core::Bytes& public_half);

// The public halves of a device's private keys, derived from the keys themselves: the P-256 identity
// key's SubjectPublicKeyInfo (DER) and the X25519 transport key's 32 bytes. Throws
// core::Error(errc::KeyMismatch) when a key does not load as what it should be.
struct PublicHalves {
  core::Bytes identity;
  core::Bytes transport;
};
PublicHalves derive_public_halves(const core::SecureBytes& identity_pkcs8, const core::SecureBytes& transport_raw);

// Moves a pool key set out of the pool into pool.device_key_quarantine with the reason, so that no
// claim takes it again and an operator can look at it. Returns false when the row was already gone.
bool quarantine_pool_key(core::pq::Connection& conn, std::int64_t pool_id, const std::string& reason);

struct PoolStatus {
  std::int64_t imeis = 0;        // waiting in the pool
  std::int64_t imeis_spent = 0;  // ever handed out (or voided)
  std::int64_t keys = 0;         // pre-generated key sets waiting
  std::string tacs;              // TACs with IMEIs in the pool, comma separated
};

// Applies the station's migrations (pool, journal, secret schemas). Returns how many ran now.
int migrate_station_db(core::pq::Connection& conn);

// Adds `count` IMEIs of this TAC (8 digits), continuing after the highest serial this database ever
// held for the TAC, so an IMEI is never made twice. Returns the first and last IMEI added.
std::pair<std::string, std::string> pool_generate_imeis(core::pq::Connection& conn, const std::string& tac,
                                                        std::int64_t count);
// Generates `count` key sets (P-256 identity, X25519 transport) in process, wraps the private halves
// with the token's wrapping key and stores them.
std::int64_t pool_generate_keys(core::pq::Connection& conn, core::Pkcs11Token& token, std::int64_t count,
                                std::ostream* progress = nullptr);
// Imports IMEIs from a CSV file: one IMEI per line in the first column; a header line and blank lines
// are skipped. Every IMEI is checked (TS 23.003 Luhn) before any is stored: one bad line refuses the
// whole file with its line number. IMEIs already in the pool or ever spent are skipped and counted.
struct ImportResult {
  std::int64_t added = 0;
  std::int64_t skipped = 0;
};
ImportResult pool_import_csv(core::pq::Connection& conn, const std::string& path);
PoolStatus pool_status(core::pq::Connection& conn);

}  // namespace keyline::station
