#include "keyline/station/key_source.h"

#include <optional>
#include <utility>

#include <botan/curve25519.h>
#include <botan/data_src.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>
#include <botan/system_rng.h>

#include "keyline/core/error.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"
#include "keyline/station/personalize.h"
#include "line_metrics.h"  // token operation latency

namespace keyline::station {

namespace {

using AadFor = std::function<core::Bytes(KeyKind, const core::Bytes&)>;

// Unwraps a row's two blobs for that row (`aad` gives the associated data of each kind and public
// half) and checks that the keys give the row's stored public halves. Throws Error(KeyMismatch):
// a blob moved from another row or beside another public half does not open, and a row whose
// public half was changed cannot get its key certified.
DeviceKeys open_row_keys(core::Pkcs11Token& token, const std::string& where, const JournalKeys& row, const AadFor& aad) {
  DeviceKeys k;
  try {
    k.identity_pkcs8 = line_detail::timed(line_detail::TokenOp::Unwrap, [&] {
      return token.unwrap_data(key_label::wrap, row.identity_wrapped, aad(KeyKind::Identity, row.identity_public));
    });
    k.transport_raw = line_detail::timed(line_detail::TokenOp::Unwrap, [&] {
      return token.unwrap_data(key_label::wrap, row.transport_wrapped, aad(KeyKind::Transport, row.transport_public));
    });
  } catch (const core::CryptoError&) {
    throw core::Error(errc::KeyMismatch, where + ": a wrapped key does not open for this row and its public half");
  }
  k.pub = derive_public_halves(k.identity_pkcs8, k.transport_raw);
  if (k.pub.identity != row.identity_public)
    throw core::Error(errc::KeyMismatch, where + ": the identity key does not give the stored identity public half");
  if (k.pub.transport != row.transport_public)
    throw core::Error(errc::KeyMismatch, where + ": the transport key does not give the stored transport public half");
  return k;
}

// What both of today's sources share: the keys are private keys held by the station (wrapped in the
// journal row while the device is under way) and all of them go into the package.
class StationHeldKeys : public KeySource {
 public:
  explicit StationHeldKeys(core::Pkcs11Token& token) : m_token(token) {}

  DeviceKeys reopen(const core::ChipId& chip, const JournalKeys& row) override {
    return open_row_keys(m_token, "journal row " + std::to_string(row.row_id), row,
                         [&chip](KeyKind kind, const core::Bytes& pub) { return journal_key_aad(chip, kind, pub); });
  }
  std::unique_ptr<Botan::Public_Key> identity_key(const DeviceKeys& keys) const override {
    Botan::DataSource_Memory src(keys.identity_pkcs8);
    return std::unique_ptr<Botan::Public_Key>(Botan::PKCS8::load_key(src));
  }
  void fill_package(core::DataPackage& package, const DeviceKeys& keys) const override {
    package.identity_key = keys.identity_pkcs8;
    package.transport_key = keys.transport_raw;
  }

 protected:
  core::Pkcs11Token& m_token;
};

// Keys first, so that the claim is a single statement (the IMEI leaves the pool in it).
class GeneratedKeys : public StationHeldKeys {
 public:
  using StationHeldKeys::StationHeldKeys;
  const char* name() const noexcept override { return "generate"; }

  DeviceKeys claim(JournalDb& db, const ClaimWriter& write) override {
    // The kernel's generator (getrandom), as for the certificates (personalize.cpp).
    Botan::RandomNumberGenerator& rng = Botan::system_rng();
    const Botan::ECDSA_PrivateKey identity(rng, Botan::EC_Group("secp256r1"));
    const Botan::Curve25519_PrivateKey transport(rng);
    DeviceKeys keys;
    keys.identity_pkcs8 = Botan::PKCS8::BER_encode(identity);
    keys.transport_raw = transport.get_x();
    keys.pub = {identity.subject_public_key(), transport.public_value()};
    write([&db](const char* sql, core::pq::Params p) { return db.step(sql, std::move(p)); }, {}, keys);
    return keys;
  }
};

// The lowest free IMEI and the lowest key set leave the pool in one transaction with the claim. A
// key set that does not open for its pool row, or whose keys are not its public halves, is never
// certified: the transaction rolls back (the IMEI returns to the pool) and the set moves to
// pool.device_key_quarantine, so it cannot block the line.
class PooledKeys : public StationHeldKeys {
 public:
  using StationHeldKeys::StationHeldKeys;
  const char* name() const noexcept override { return "pool"; }

  DeviceKeys claim(JournalDb& db, const ClaimWriter& write) override {
    DeviceKeys keys;
    std::optional<std::pair<std::int64_t, std::string>> bad;  // pool row id, reason
    try {
      db.with([&](core::pq::Connection& c) {
        core::pq::run_transaction(c, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
          bad.reset();
          const std::string imei = take_imei(tx);
          keys = take_key_set(tx, bad);
          write([&tx](const char* sql, core::pq::Params p) { return tx.connection().exec_prepared(sql, p); }, imei,
                keys);
        });
      });
    } catch (const core::Error& e) {
      if (!bad || e.code() != errc::KeyMismatch) throw;
      db.with([&](core::pq::Connection& c) { quarantine_pool_key(c, bad->first, bad->second); });
      throw core::Error(errc::KeyMismatch, std::string(e.what()) +
                                               "; the key set was quarantined (pool.device_key_quarantine), nothing was"
                                               " claimed or certified");
    }
    return keys;
  }

 private:
  static std::string take_imei(core::pq::Transaction& tx) {
    const auto r = tx.exec(
        "WITH c AS (SELECT imei FROM pool.imei ORDER BY imei LIMIT 1 FOR UPDATE SKIP LOCKED)"
        " DELETE FROM pool.imei p USING c WHERE p.imei = c.imei RETURNING p.imei");
    if (r.empty())
      throw core::Error(errc::PoolEmpty, "no IMEI left in the pool: add some with `keyline-station pool generate`");
    return r.text(0, 0);
  }

  DeviceKeys take_key_set(core::pq::Transaction& tx, std::optional<std::pair<std::int64_t, std::string>>& bad) {
    const auto k = tx.exec(
        "WITH c AS (SELECT id FROM pool.device_key ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
        " DELETE FROM pool.device_key p USING c WHERE p.id = c.id"
        " RETURNING p.id, identity_wrapped, identity_public, transport_wrapped, transport_public");
    if (k.empty()) throw core::Error(errc::PoolEmpty, "no pre-generated keys left: `keyline-station pool generate --keys N`");
    JournalKeys row;
    row.row_id = k.int64(0, 0);
    row.identity_wrapped = k.bytea(0, 1);
    row.identity_public = k.bytea(0, 2);
    row.transport_wrapped = k.bytea(0, 3);
    row.transport_public = k.bytea(0, 4);
    const std::int64_t id = row.row_id;
    try {
      return open_row_keys(m_token, "pool key set " + std::to_string(id), row,
                           [id](KeyKind kind, const core::Bytes& pub) { return pool_key_aad(id, kind, pub); });
    } catch (const core::Error& e) {
      if (e.code() == errc::KeyMismatch) bad.emplace(id, e.what());
      throw;
    }
  }
};

}  // namespace

std::unique_ptr<KeySource> make_key_source(const std::string& name, core::Pkcs11Token& token) {
  if (name == "generate") return std::make_unique<GeneratedKeys>(token);
  if (name == "pool") return std::make_unique<PooledKeys>(token);
  if (name == "device") return make_device_key_source();
  throw core::ConfigError(core::ErrorCode::Config,
                          "key source must be \"generate\", \"pool\" or \"device\", not \"" + name + "\"");
}

}  // namespace keyline::station
