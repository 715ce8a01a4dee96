#include "keyline/station/pool.h"

#include <fstream>
#include <sstream>
#include <vector>

#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/data_src.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>

#include "keyline/core/error.h"
#include "keyline/core/imei.h"
#include "keyline/core/migrate.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"

namespace keyline::station {

const std::vector<core::Migration>& embedded_migrations();

int migrate_station_db(core::pq::Connection& conn) {
  return core::apply_migrations(conn, "public.station_schema_migrations", embedded_migrations());
}

namespace {

// A PostgreSQL text[] literal of digit strings (IMEIs hold digits only, checked before).
std::string text_array(const std::vector<std::string>& items) {
  std::string s = "{";
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i) s += ',';
    s += items[i];
  }
  return s + "}";
}

constexpr std::size_t kBatch = 5000;

// table name || 00 || row || kind || u16 length || public half: every field has a fixed size or a
// length, so two different rows can never give the same bytes.
core::Bytes key_aad(const char* table, const std::uint8_t* row, std::size_t row_len, KeyKind kind,
                    const core::Bytes& public_half) {
  if (public_half.empty() || public_half.size() > 0xFFFF)
    throw core::Error(errc::KeyMismatch, "a device key's public half is empty or too long");
  core::Bytes aad(table, table + std::char_traits<char>::length(table));
  aad.push_back(0x00);
  aad.insert(aad.end(), row, row + row_len);
  aad.push_back(static_cast<std::uint8_t>(kind));
  aad.push_back(static_cast<std::uint8_t>(public_half.size() >> 8));
  aad.push_back(static_cast<std::uint8_t>(public_half.size() & 0xFF));
  aad.insert(aad.end(), public_half.begin(), public_half.end());
  return aad;
}

}  // namespace

core::Bytes pool_key_aad(std::int64_t pool_id, KeyKind kind, const core::Bytes& public_half) {
  std::uint8_t id[8];
  for (int i = 0; i < 8; ++i) id[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(pool_id) >> (56 - 8 * i));
  return key_aad("pool.device_key", id, sizeof id, kind, public_half);
}

core::Bytes journal_key_aad(const core::ChipId& chip, KeyKind kind, const core::Bytes& public_half) {
  return key_aad("journal.device", chip.bytes().data(), chip.bytes().size(), kind, public_half);
}

PublicHalves derive_public_halves(const core::SecureBytes& identity_pkcs8, const core::SecureBytes& transport_raw) {
  PublicHalves h;
  try {
    Botan::DataSource_Memory src(identity_pkcs8);
    const std::unique_ptr<Botan::Private_Key> identity(Botan::PKCS8::load_key(src));
    const auto* ec = dynamic_cast<const Botan::ECDSA_PrivateKey*>(identity.get());
    if (!ec || ec->domain().get_curve_oid() != Botan::EC_Group("secp256r1").get_curve_oid())
      throw core::Error(errc::KeyMismatch, "the identity key is not a P-256 ECDSA key");
    h.identity = identity->subject_public_key();
  } catch (const core::Error&) {
    throw;
  } catch (const std::exception&) {
    // Botan's message could quote the key's bytes; the kind of key is enough.
    throw core::Error(errc::KeyMismatch, "the identity key does not load as PKCS#8");
  }
  if (transport_raw.size() != 32) throw core::Error(errc::KeyMismatch, "the transport key is not a 32-byte X25519 key");
  h.transport = Botan::Curve25519_PrivateKey(transport_raw).public_value();
  return h;
}

bool quarantine_pool_key(core::pq::Connection& conn, std::int64_t pool_id, const std::string& reason) {
  return conn
             .exec("WITH q AS (DELETE FROM pool.device_key WHERE id = $1 RETURNING *)"
                   " INSERT INTO pool.device_key_quarantine (id, identity_wrapped, identity_public, transport_wrapped,"
                   " transport_public, wrap_key_label, added_at, reason)"
                   " SELECT id, identity_wrapped, identity_public, transport_wrapped, transport_public, wrap_key_label,"
                   " added_at, $2 FROM q",
                   {pool_id, reason.substr(0, 500)})
             .affected() == 1;
}

std::pair<std::string, std::string> pool_generate_imeis(core::pq::Connection& conn, const std::string& tac,
                                                        std::int64_t count) {
  if (tac.size() != 8 || tac.find_first_not_of("0123456789") != std::string::npos)
    throw core::FormatError(core::ErrorCode::BadImei, "TAC must be 8 digits, not \"" + tac + "\"");
  if (count <= 0) throw core::ConfigError(core::ErrorCode::Usage, "count must be positive");
  std::pair<std::string, std::string> range;
  core::pq::run_transaction(conn, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
    // One generator per TAC at a time; the spent table remembers serials after their pool rows are gone.
    tx.exec("SELECT pg_advisory_xact_lock(hashtext('keyline_pool_tac_' || $1))", {tac});
    const auto r = tx.exec(
        "SELECT coalesce(max(s), -1) FROM ("
        " SELECT substr(imei, 9, 6)::int AS s FROM pool.imei WHERE substr(imei, 1, 8) = $1"
        " UNION ALL SELECT substr(imei, 9, 6)::int FROM pool.imei_spent WHERE substr(imei, 1, 8) = $1) x",
        {tac});
    const std::int64_t next = r.int64(0, 0) + 1;
    if (next + count > 1000000)
      throw core::Error(core::ErrorCode::BadImei, "TAC " + tac + " has only " + std::to_string(1000000 - next) +
                                                      " serial numbers left; asked for " + std::to_string(count));
    std::vector<std::string> batch;
    for (std::int64_t i = 0; i < count; ++i) {
      const auto imei = core::Imei::from_tac_serial(tac, static_cast<std::uint32_t>(next + i)).str();
      if (i == 0) range.first = imei;
      range.second = imei;
      batch.push_back(imei);
      if (batch.size() == kBatch || i + 1 == count) {
        tx.exec("INSERT INTO pool.imei (imei, tac, source) SELECT unnest($1::text[]), $2, 'generate'",
                {text_array(batch), tac});
        batch.clear();
      }
    }
  });
  return range;
}

std::int64_t pool_generate_keys(core::pq::Connection& conn, core::Pkcs11Token& token, std::int64_t count,
                                std::ostream* progress) {
  if (count <= 0) throw core::ConfigError(core::ErrorCode::Usage, "count must be positive");
  Botan::AutoSeeded_RNG rng;
  const Botan::EC_Group p256("secp256r1");
  std::int64_t done = 0;
  while (done < count) {
    const std::int64_t n = std::min<std::int64_t>(500, count - done);
    core::pq::Transaction tx(conn);
    // The row's id goes into the wrap's associated data, so it is taken before the row is written.
    const auto ids = tx.exec("SELECT nextval(pg_get_serial_sequence('pool.device_key', 'id')) FROM generate_series(1, $1)",
                             {n});
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t id = ids.int64(static_cast<int>(i), 0);
      Botan::ECDSA_PrivateKey identity(rng, p256);
      Botan::Curve25519_PrivateKey transport(rng);
      const core::SecureBytes identity_der = Botan::PKCS8::BER_encode(identity);
      const core::SecureBytes transport_raw = transport.get_x();
      const core::Bytes identity_pub = identity.subject_public_key();
      const core::Bytes transport_pub = transport.public_value();
      tx.exec(
          "INSERT INTO pool.device_key (id, identity_wrapped, identity_public, transport_wrapped, transport_public,"
          " wrap_key_label) VALUES ($1, $2, $3, $4, $5, $6)",
          {id, token.wrap_data(key_label::wrap, identity_der, pool_key_aad(id, KeyKind::Identity, identity_pub)),
           identity_pub, token.wrap_data(key_label::wrap, transport_raw, pool_key_aad(id, KeyKind::Transport, transport_pub)),
           transport_pub, std::string(key_label::wrap)});
    }
    tx.commit();
    done += n;
    if (progress) *progress << "pool: " << done << "/" << count << " key sets generated\n" << std::flush;
  }
  return done;
}

ImportResult pool_import_csv(core::pq::Connection& conn, const std::string& path) {
  std::ifstream in(path);
  if (!in) throw core::IoError(core::ErrorCode::Io, "cannot read " + path);
  std::vector<std::string> imeis;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string field = line.substr(0, line.find(','));
    const auto b = field.find_first_not_of(" \t\"");
    if (b == std::string::npos) continue;
    const std::string v = field.substr(b, field.find_last_not_of(" \t\"") - b + 1);
    if (lineno == 1 && v.find_first_not_of("0123456789") != std::string::npos) continue;  // header
    if (!core::Imei::is_valid(v))
      throw core::FormatError(core::ErrorCode::BadImei,
                              path + " line " + std::to_string(lineno) + ": \"" + v.substr(0, 32) +
                                  "\" is not an IMEI (15 digits with a valid check digit); nothing imported");
    imeis.push_back(v);
  }
  ImportResult result;
  core::pq::run_transaction(conn, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
    result = {};
    for (std::size_t i = 0; i < imeis.size(); i += kBatch) {
      std::vector<std::string> batch(imeis.begin() + i, imeis.begin() + std::min(imeis.size(), i + kBatch));
      const auto r = tx.exec(
          "INSERT INTO pool.imei (imei, tac, source)"
          " SELECT DISTINCT i, substr(i, 1, 8), $2 FROM unnest($1::text[]) AS i"
          " WHERE NOT EXISTS (SELECT 1 FROM pool.imei_spent s WHERE s.imei = i)"
          " ON CONFLICT (imei) DO NOTHING",
          {text_array(batch), "import:" + path});
      result.added += r.affected();
    }
    result.skipped = static_cast<std::int64_t>(imeis.size()) - result.added;
  });
  return result;
}

PoolStatus pool_status(core::pq::Connection& conn) {
  PoolStatus s;
  const auto r = conn.exec(
      "SELECT (SELECT count(*) FROM pool.imei), (SELECT count(*) FROM pool.imei_spent),"
      " (SELECT count(*) FROM pool.device_key),"
      " (SELECT coalesce(string_agg(DISTINCT tac, ','), '') FROM pool.imei)");
  s.imeis = r.int64(0, 0);
  s.imeis_spent = r.int64(0, 1);
  s.keys = r.int64(0, 2);
  s.tacs = r.text(0, 3);
  return s;
}

}  // namespace keyline::station
