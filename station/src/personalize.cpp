#include "keyline/station/personalize.h"

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <optional>
#include <thread>

#include <botan/curve25519.h>
#include <botan/data_src.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/hash.h>
#include <botan/hex.h>
#include <botan/pem.h>
#include <botan/pkcs8.h>
#include <botan/system_rng.h>

#include "keyline/core/apdu.h"
#include "keyline/core/applet_protocol.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/cplc.h"
#include "keyline/core/data_package.h"
#include "keyline/core/error.h"
#include "keyline/core/record.h"
#include "keyline/station/errors.h"
#include "keyline/station/fault_hook.h"
#include "keyline/station/pool.h"

namespace keyline::station {

const char* step_name(Step s) noexcept {
  switch (s) {
    case Step::Connect: return "connect";
    case Step::ReadDevice: return "read-device";
    case Step::Claim: return "claim";
    case Step::Issue: return "issue";
    case Step::Store: return "store";
    case Step::Backup: return "backup";
    case Step::Record: return "record";
    case Step::Publish: return "publish";
    case Step::Done: return "done";
  }
  return "?";
}

namespace {

namespace applet = core::applet;

// With short APDUs only (--short-apdus, for readers without extended length) STORE DATA goes in
// 240-byte blocks and long answers come back in 256-byte pieces; otherwise one extended APDU carries
// the whole ~3 KB package (ISO 7816-4 5.1: extended Lc up to 65535), cutting ~40 round trips per
// device to ~8, which is what bounds a line's throughput.
constexpr std::size_t kShortStoreBlock = 240;
constexpr std::size_t kExtendedStoreBlock = 65535;

// A status word other than 9000 is the device refusing: a definite answer, unlike a dropped link.
class DeviceRefusal : public core::Error {
 public:
  DeviceRefusal(const std::string& what, std::uint16_t sw)
      : core::Error(errc::DeviceRefused, what + " answered " + core::sw_text(sw)), m_sw(sw) {}
  std::uint16_t sw() const { return m_sw; }

 private:
  std::uint16_t m_sw;
};

// max_answer: the longest answer the command has (docs/protocol.md section 2a); more is refused.
core::ResponseApdu expect_ok(core::DeviceLink& link, const core::CommandApdu& c, const char* what,
                             std::size_t max_answer) {
  auto r = link.transmit(c, max_answer);
  if (r.sw != core::sw::ok) throw DeviceRefusal(what, r.sw);
  return r;
}

std::string sha256_hex(const core::Bytes& b) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  return Botan::hex_encode(h->process(b));
}

// One audit row. A "sign.begin" row is durable before the CA key signs; its "sign.done" rides in the
// statement that records the certificates, so the trail accounts for every use of the CA key.
struct AuditRow {
  const char* event;
  const char* kind;
  std::string detail;
};

void audit(core::pq::Connection& db, const std::string& station, const std::string& chip, const std::string& imei,
           const std::vector<AuditRow>& rows) {
  core::pq::run_transaction(db, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
    for (const auto& r : rows)
      tx.exec(
          "INSERT INTO journal.audit (station_id, event, chip_id, imei, cert_kind, detail) VALUES ($1,$2,$3,$4,$5,$6)",
          {station, r.event, chip, imei, r.kind, r.detail});
  });
}

// The journal's statements. Each step that changes the journal is one statement (data-modifying
// WITH clauses, PostgreSQL 15 manual section 7.8.4: all of them run, in one snapshot, and commit or
// fail together), so a step costs one round trip and one durable commit, not BEGIN, N statements and
// COMMIT: on a line the database's per-statement and per-commit work is what bounds devices/s.
//
// Claim: the IMEI comes from the CTE "i"; the spent list, the journal row and both "sign.begin" rows
// commit with it ($1 chip, $2 station, $3..$6 wrapped keys and public halves, $7/$8 audit details).
#define KEYLINE_CLAIM_TAIL                                                                                           \
  " s AS (INSERT INTO pool.imei_spent (imei) SELECT imei FROM i ON CONFLICT DO NOTHING),"                          \
  " d AS (INSERT INTO journal.device (chip_id, imei, station_id, state, identity_wrapped, transport_wrapped,"      \
  "  identity_public, transport_public)"                                                                            \
  "  SELECT $1::text, imei, $2::text, 'claimed', $3::bytea, $4::bytea, $5::bytea, $6::bytea FROM i RETURNING id, imei)," \
  " a AS (INSERT INTO journal.audit (station_id, event, chip_id, imei, cert_kind, detail)"                         \
  "  SELECT $2::text, 'sign.begin', $1::text, d.imei, k.kind, k.detail FROM d,"                                     \
  "  (VALUES (1, 'identity', $7::text), (2, 'transport', $8::text)) AS k (n, kind, detail) ORDER BY k.n)"            \
  " SELECT id, imei FROM d"
// Generated keys: the lowest free IMEI leaves the pool in the same statement (SKIP LOCKED: two
// stations never wait on, or take, the same row).
constexpr const char* kClaimNextImei =
    "WITH c AS (SELECT imei FROM pool.imei ORDER BY imei LIMIT 1 FOR UPDATE SKIP LOCKED),"
    " i AS (DELETE FROM pool.imei p USING c WHERE p.imei = c.imei RETURNING p.imei)," KEYLINE_CLAIM_TAIL;
// Pooled keys: IMEI ($9) and keys were taken earlier in the same transaction.
constexpr const char* kClaimGivenImei = "WITH i AS (SELECT $9::text AS imei)," KEYLINE_CLAIM_TAIL;
#undef KEYLINE_CLAIM_TAIL

// Issued: certificates and package digest, with both "sign.done" rows.
constexpr const char* kIssued =
    "WITH u AS (UPDATE journal.device SET state = 'issued', identity_cert = $2, transport_cert = $3,"
    " package_digest = $4, updated_at = now() WHERE id = $1)"
    " INSERT INTO journal.audit (station_id, event, chip_id, imei, cert_kind, detail)"
    " VALUES ($5, 'sign.done', $6, $7, 'identity', $8), ($5, 'sign.done', $6, $7, 'transport', $9)";

// Backed up: wrapped keys wiped, secret DB row and outbox row, all or nothing.
constexpr const char* kBackedUp =
    "WITH u AS (UPDATE journal.device SET state = 'backed_up', identity_wrapped = NULL, transport_wrapped = NULL,"
    " updated_at = now() WHERE id = $1),"
    " s AS (INSERT INTO secret.device (chip_id, imei, identity_cert_sha256, transport_cert_sha256, comm_key_kcv,"
    " station_id) VALUES ($2, $3, $4, $5, $6, $7) ON CONFLICT (chip_id) DO NOTHING)"
    " INSERT INTO journal.outbox (chip_id, device_id, record_json, record_hash) VALUES ($2, $1, $8, $9)"
    " ON CONFLICT (chip_id) DO NOTHING";

// One journal row as read back for a resume.
struct JournalRow {
  std::int64_t id = 0;
  std::string imei;
  std::string state;
  core::Bytes identity_wrapped, transport_wrapped, identity_public, transport_public;
  core::Bytes identity_cert, transport_cert, package_digest;
};

std::optional<JournalRow> live_row(JournalDb& db, const std::string& chip) {
  const auto r = db.step(
      "SELECT id, imei, state, identity_wrapped, transport_wrapped, identity_public, transport_public,"
      " identity_cert, transport_cert, package_digest FROM journal.device WHERE chip_id = $1 AND state <> 'void'",
      {chip});
  if (r.empty()) return std::nullopt;
  JournalRow j;
  j.id = r.int64(0, 0);
  j.imei = r.text(0, 1);
  j.state = r.text(0, 2);
  j.identity_wrapped = r.bytea(0, 3);
  j.transport_wrapped = r.bytea(0, 4);
  j.identity_public = r.bytea(0, 5);
  j.transport_public = r.bytea(0, 6);
  j.identity_cert = r.bytea(0, 7);
  j.transport_cert = r.bytea(0, 8);
  j.package_digest = r.bytea(0, 9);
  return j;
}

// Seed 002: symmetric keys are derived from one master key and the device identity, so no secret
// database of per-device keys is needed. The derivation runs inside the token.
core::SecureBytes derive_comm_key(core::Pkcs11Token& token, const std::string& imei) {
  const std::string input = "keyline/comm/v1" + imei;
  return token.derive_hmac_sha256(key_label::master, core::Bytes(input.begin(), input.end()));
}

std::string subject_detail(const core::Bytes& subject_key) { return "subject key SHA-256 " + sha256_hex(subject_key); }

void void_claim(core::pq::Connection& db, std::int64_t id, const std::string& reason) {
  db.exec(
      "UPDATE journal.device SET state = 'void', void_reason = $2, identity_wrapped = NULL,"
      " transport_wrapped = NULL, updated_at = now() WHERE id = $1 AND state IN ('claimed','issued','stored')",
      {id, reason.substr(0, 500)});
}

// A device's private keys and the public halves derived from them: the only halves ever certified.
struct OpenedKeys {
  core::SecureBytes identity_pkcs8, transport_raw;
  PublicHalves pub;
};

// Unwraps a row's two blobs for that row (`aad` gives the associated data of each kind and public
// half) and checks that the keys give the row's stored public halves. Throws Error(KeyMismatch):
// a blob moved from another row or beside another public half does not open, and a row whose
// public half was changed cannot get its key certified.
OpenedKeys open_row_keys(core::Pkcs11Token& token, const std::string& where, const core::Bytes& identity_wrapped,
                         const core::Bytes& transport_wrapped, const core::Bytes& identity_public,
                         const core::Bytes& transport_public,
                         const std::function<core::Bytes(KeyKind, const core::Bytes&)>& aad) {
  OpenedKeys k;
  try {
    k.identity_pkcs8 = token.unwrap_data(key_label::wrap, identity_wrapped, aad(KeyKind::Identity, identity_public));
    k.transport_raw = token.unwrap_data(key_label::wrap, transport_wrapped, aad(KeyKind::Transport, transport_public));
  } catch (const core::CryptoError&) {
    throw core::Error(errc::KeyMismatch, where + ": a wrapped key does not open for this row and its public half");
  }
  k.pub = derive_public_halves(k.identity_pkcs8, k.transport_raw);
  if (k.pub.identity != identity_public)
    throw core::Error(errc::KeyMismatch, where + ": the identity key does not give the stored identity public half");
  if (k.pub.transport != transport_public)
    throw core::Error(errc::KeyMismatch, where + ": the transport key does not give the stored transport public half");
  return k;
}

// Pooled keys: the lowest free IMEI and the lowest key set leave the pool in one transaction with the
// claim (`claim(tx, imei)` writes the journal row). A key set that does not open for its pool row, or
// whose keys are not its public halves, is never certified: the transaction rolls back (the IMEI
// returns to the pool) and the set moves to pool.device_key_quarantine, so it cannot block the line.
void claim_pooled(JournalDb& db, core::Pkcs11Token& token, OpenedKeys& keys,
                  const std::function<void(core::pq::Transaction&, const std::string&)>& claim) {
  std::optional<std::pair<std::int64_t, std::string>> bad;  // pool row id, reason
  try {
    db.with([&](core::pq::Connection& c) {
      core::pq::run_transaction(c, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
        bad.reset();
        const auto imei_r = tx.exec(
            "WITH c AS (SELECT imei FROM pool.imei ORDER BY imei LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " DELETE FROM pool.imei p USING c WHERE p.imei = c.imei RETURNING p.imei");
        if (imei_r.empty())
          throw core::Error(errc::PoolEmpty, "no IMEI left in the pool: add some with `keyline-station pool generate`");
        const auto k = tx.exec(
            "WITH c AS (SELECT id FROM pool.device_key ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " DELETE FROM pool.device_key p USING c WHERE p.id = c.id"
            " RETURNING p.id, identity_wrapped, identity_public, transport_wrapped, transport_public");
        if (k.empty())
          throw core::Error(errc::PoolEmpty, "no pre-generated keys left: `keyline-station pool generate --keys N`");
        const std::int64_t id = k.int64(0, 0);
        try {
          keys = open_row_keys(token, "pool key set " + std::to_string(id), k.bytea(0, 1), k.bytea(0, 3), k.bytea(0, 2),
                               k.bytea(0, 4), [id](KeyKind kind, const core::Bytes& pub) { return pool_key_aad(id, kind, pub); });
        } catch (const core::Error& e) {
          if (e.code() == errc::KeyMismatch) bad.emplace(id, e.what());
          throw;
        }
        claim(tx, imei_r.text(0, 0));
      });
    });
  } catch (const core::Error& e) {
    if (!bad || e.code() != errc::KeyMismatch) throw;
    db.with([&](core::pq::Connection& c) { quarantine_pool_key(c, bad->first, bad->second); });
    throw core::Error(errc::KeyMismatch, std::string(e.what()) +
                                             "; the key set was quarantined (pool.device_key_quarantine), nothing was"
                                             " claimed or certified");
  }
}

}  // namespace

void mark_published(core::pq::Connection& db, const std::vector<std::pair<std::string, std::int64_t>>& published) {
  if (published.empty()) return;
  // Array parameters in PostgreSQL's text form ("{a,b}", manual section 8.15.6): chip IDs are 20 hex
  // digits and journal IDs integers, so no element needs quoting.
  std::string chips = "{", ids = "{";
  for (const auto& [chip, id] : published) {
    if (!core::ChipId::is_valid(chip)) throw core::Error(errc::JournalConflict, "not a chip ID: " + chip);
    chips += (chips.size() > 1 ? "," : "") + chip;
    ids += (ids.size() > 1 ? "," : "") + std::to_string(id);
  }
  // Not prepared: a generic plan cannot know the arrays' sizes and scans both tables.
  db.exec(
      "WITH o AS (UPDATE journal.outbox SET published_at = now(), attempts = attempts + 1, last_error = NULL"
      " WHERE chip_id = ANY($1::text[]) AND published_at IS NULL)"
      " UPDATE journal.device SET state = 'published', updated_at = now()"
      " WHERE id = ANY($2::bigint[]) AND state = 'backed_up'",
      {chips + "}", ids + "}"});
}

void mark_published(core::pq::Connection& db, const std::string& chip_id, std::int64_t device_id) {
  mark_published(db, {{chip_id, device_id}});
}

Personalizer::Personalizer(const StationConfig& config, StationKeys& keys, Publisher* publisher)
    : m_config(config), m_keys(keys), m_publisher(publisher) {
  // Crash tests (fault_hook.h): a no-op unless the test program installed a fault hook.
  if (fault_hook_installed()) m_hook = [](Step s, const std::string&) { fault_point(step_name(s)); };
}

void Personalizer::step(Step s, const std::string& chip_id) {
  if (m_hook) m_hook(s, chip_id);
}

DeviceResult Personalizer::personalize(const std::string& endpoint, core::pq::Connection& db) {
  JournalDb j(db);
  return personalize(endpoint, j);
}

DeviceResult Personalizer::personalize(const std::string& endpoint, JournalDb& db) {
  DeviceResult res;
  res.endpoint = endpoint;
  Step cur = Step::Connect;
  std::optional<std::int64_t> claim_id;
  bool may_void = false;  // true while a refusal means the claim can never complete
  // The kernel's generator (getrandom): a call is a system call, where AutoSeeded_RNG's HMAC_DRBG
  // spent ~8% of the station's CPU re-keying SHA-512 HMACs for the many small requests a device makes.
  Botan::RandomNumberGenerator& rng = Botan::system_rng();
  try {
    const auto [host, port] = core::DeviceLink::parse_endpoint(endpoint);
    core::DeviceLinkOptions link_options;
    link_options.max_chunk = m_config.short_apdus ? 255 : 65535;
    core::DeviceLink link(host, port, link_options);
    const std::size_t store_block = m_config.short_apdus ? kShortStoreBlock : kExtendedStoreBlock;
    link.connect();

    // --- read the device (step 4 of seed 002: the chip ID from read-only storage) -------------
    cur = Step::ReadDevice;
    expect_ok(link, applet::select_command(), "SELECT personalization applet", 0);
    // The one STATUS layout (core::applet::parse_status): any other length or byte is refused here,
    // before anything is claimed.
    const applet::Status status = applet::parse_status(
        expect_ok(link, applet::status_command(), "STATUS", applet::kStatusSizeWithImei).data);
    // 9F 7F 2A || CPLC.
    const auto cplc_r = expect_ok(link, applet::get_cplc_command(), "GET DATA CPLC", 3 + core::kCplcSize);
    const core::ChipId chip = core::Cplc::parse(cplc_r.data.data(), cplc_r.data.size()).chip_id();
    res.chip_id = chip.str();
    if (status.chip_id != chip) throw core::Error(errc::DeviceRefused, "STATUS and CPLC name different chips");
    const bool personalized = status.personalized();
    std::optional<JournalRow> row = live_row(db, res.chip_id);
    // A published row means this very station finished the device: a second run is a refusal, not a
    // "done" (issue #5: an already personalized device is refused before any IMEI is claimed).
    if (personalized && (!row || row->state == "claimed" || row->state == "published")) {
      // A claim that never reached STORE DATA ('issued' is journaled before it) cannot be this device's
      // personalization: void it so the journal holds no half-issued row.
      if (row && row->state == "claimed")
        db.with([&](core::pq::Connection& c) {
          void_claim(c, row->id, "device was personalized elsewhere after the claim");
        });
      throw core::Error(errc::AlreadyPersonalized,
                        "device is already personalized" + (status.imei ? " as IMEI " + status.imei->str() : std::string()) +
                            "; nothing was claimed (reset it to blank on purpose to personalize it again)");
    }
    if (!personalized && row && (row->state == "backed_up" || row->state == "published"))
      throw core::Error(errc::AlreadyPersonalized, "device was personalized as IMEI " + row->imei +
                                                       " and has lost its flash: restore it with keyline-recovery");
    step(Step::ReadDevice, res.chip_id);

    // --- claim (step 3): IMEI and keys leave the pool in the statement that journals them --------
    cur = Step::Claim;
    OpenedKeys keys;
    bool begin_logged = false;  // both sign.begin rows committed with the claim
    const auto journal_aad = [&chip](KeyKind kind, const core::Bytes& pub) { return journal_key_aad(chip, kind, pub); };
    if (row && !personalized && row->identity_wrapped.empty()) {
      // Migration 0006 wiped the blobs wrapped before rows were bound (docs/decisions.md): a blank
      // device cannot get those keys back, so this claim can never complete and a new one is made.
      db.with([&](core::pq::Connection& c) {
        void_claim(c, row->id, "its keys were wrapped before migration 0006 and are void; a new IMEI was claimed");
      });
      row.reset();
    }
    if (row) {
      res.imei = row->imei;
      claim_id = row->id;
      // A blank device needs its keys again (a personalized one goes on to the backup check): they
      // stay with this chip, unwrapped for this chip's row (the wrapping key never leaves the token).
      if (!personalized) {
        try {
          keys = open_row_keys(*m_keys.token, "journal row " + std::to_string(row->id), row->identity_wrapped,
                               row->transport_wrapped, row->identity_public, row->transport_public, journal_aad);
        } catch (const core::Error& e) {
          if (e.code() != errc::KeyMismatch) throw;
          db.with([&](core::pq::Connection& c) { void_claim(c, row->id, e.what()); });
          throw core::Error(errc::KeyMismatch, std::string(e.what()) + "; nothing was certified (IMEI " + res.imei + " voided)");
        }
      }
    } else {
      // `exec` runs the claim statement: inside the pooled keys' transaction, or as a step of its own.
      auto claim = [&](const std::function<core::pq::Result(const char*, core::pq::Params)>& exec, const char* sql,
                       core::pq::Params extra, const core::Bytes& idw, const core::Bytes& trw) {
        core::pq::Params p{res.chip_id, m_config.station_id, idw, trw, keys.pub.identity, keys.pub.transport,
                           subject_detail(keys.pub.identity), subject_detail(keys.pub.transport)};
        for (auto& e : extra) p.push_back(std::move(e));
        try {
          const auto r = exec(sql, std::move(p));
          if (r.empty())
            throw core::Error(errc::PoolEmpty, "no IMEI left in the pool: add some with `keyline-station pool generate`");
          claim_id = r.int64(0, 0);
          res.imei = r.text(0, 1);
        } catch (const core::DbError& e) {
          if (e.code() != core::ErrorCode::DbUniqueViolation) throw;
          // Another station holds this chip right now; the failed statement returns our IMEI to the pool.
          throw core::Error(errc::JournalConflict, "another station is personalizing this chip");
        }
      };
      // The journal's blobs are bound to this chip's row (a pool blob is bound to its pool row).
      const auto wrap_for_journal = [&] {
        return std::make_pair(
            m_keys.token->wrap_data(key_label::wrap, keys.identity_pkcs8, journal_aad(KeyKind::Identity, keys.pub.identity)),
            m_keys.token->wrap_data(key_label::wrap, keys.transport_raw,
                                    journal_aad(KeyKind::Transport, keys.pub.transport)));
      };
      if (m_config.key_source == "pool") {
        claim_pooled(db, *m_keys.token, keys, [&](core::pq::Transaction& tx, const std::string& imei) {
          const auto [idw, trw] = wrap_for_journal();
          claim([&](const char* sql, core::pq::Params p) { return tx.connection().exec_prepared(sql, p); },
                kClaimGivenImei, {imei}, idw, trw);
        });
      } else {
        // Keys first, so that the claim is a single statement.
        Botan::ECDSA_PrivateKey identity(rng, Botan::EC_Group("secp256r1"));
        Botan::Curve25519_PrivateKey transport(rng);
        keys.identity_pkcs8 = Botan::PKCS8::BER_encode(identity);
        keys.transport_raw = transport.get_x();
        keys.pub = {identity.subject_public_key(), transport.public_value()};
        const auto [idw, trw] = wrap_for_journal();
        claim([&](const char* sql, core::pq::Params p) { return db.step(sql, std::move(p)); }, kClaimNextImei, {}, idw,
              trw);
      }
      begin_logged = true;
      row = JournalRow{};
      row->id = *claim_id;
      row->imei = res.imei;
      row->state = "claimed";
      row->identity_public = keys.pub.identity;
      row->transport_public = keys.pub.transport;
    }
    step(Step::Claim, res.chip_id);
    const core::Imei imei = core::Imei::parse(res.imei);

    // --- issue and store (steps 4-5) ------------------------------------------------------------
    const bool need_store = !personalized;
    core::Bytes identity_der = row->identity_cert, transport_der = row->transport_cert;
    std::string kcv_hex;  // the communication key's check value, for the secret DB
    if (need_store) {
      cur = Step::Issue;
      may_void = true;
      // Both certificates are for the halves derived from the private keys (open_row_keys), never
      // for a public half read from a database.
      Botan::DataSource_Memory src(keys.identity_pkcs8);
      std::unique_ptr<Botan::Private_Key> identity_key(Botan::PKCS8::load_key(src));
      const Botan::Curve25519_PublicKey transport_pub(keys.pub.transport);
      const std::string& who = res.chip_id;

      const core::SecureBytes comm_key = derive_comm_key(*m_keys.token, res.imei);
      kcv_hex = core::to_hex(core::key_check_value(comm_key));

      // Every sign.begin ends in sign.done or sign.failed, so the audit trail accounts for each use of
      // the CA key. The failure detail is a lint rule or a token message, never key material.
      if (!begin_logged)
        db.with([&](core::pq::Connection& c) {
          audit(c, m_config.station_id, who, res.imei,
                {{"sign.begin", "identity", subject_detail(keys.pub.identity)},
                 {"sign.begin", "transport", subject_detail(keys.pub.transport)}});
        });
      const auto sign_failed = [&](const char* kind, const std::exception& e, std::vector<AuditRow> also) {
        also.insert(also.begin(), {"sign.failed", kind, std::string(e.what()).substr(0, 300)});
        try {
          db.with([&](core::pq::Connection& c) { audit(c, m_config.station_id, who, res.imei, also); });
        } catch (const std::exception&) {
          // The signing error is the one to report; a dead DB shows up on the next statement.
        }
      };
      try {
        identity_der = core::issue_identity_certificate_der(m_keys.device_ca_cert, *m_keys.device_ca_key, *identity_key,
                                                        imei, chip, m_config.hw_type, rng);
      } catch (const std::exception& e) {
        sign_failed("identity", e, {{"sign.failed", "transport", "not signed: the identity certificate failed first"}});
        throw;
      }
      try {
        transport_der = core::issue_transport_certificate_der(m_keys.device_ca_cert, *m_keys.device_ca_key, transport_pub,
                                                          imei, chip, m_config.hw_type, rng);
      } catch (const std::exception& e) {
        sign_failed("transport", e, {{"sign.done", "identity", "certificate SHA-256 " + sha256_hex(identity_der)}});
        throw;
      }

      core::DataPackage pkg;
      pkg.imei = imei;
      pkg.station_id = m_config.station_id;
      pkg.issued_at = static_cast<std::uint64_t>(std::time(nullptr));
      pkg.identity_cert = identity_der;
      pkg.transport_cert = transport_der;
      pkg.ca_chain.push_back(m_keys.device_ca_cert.BER_encode());
      pkg.identity_key = keys.identity_pkcs8;
      pkg.transport_key = keys.transport_raw;
      pkg.comm_key = comm_key;
      pkg.app_items = m_app_items;
      const core::SecureBytes encoded = pkg.encode();
      const core::Bytes digest = core::package_digest(encoded);
      db.step(kIssued, {*claim_id, identity_der, transport_der, digest, m_config.station_id, who, res.imei,
                        "certificate SHA-256 " + sha256_hex(identity_der),
                        "certificate SHA-256 " + sha256_hex(transport_der)});
      row->package_digest = digest;
      step(Step::Issue, res.chip_id);

      cur = Step::Store;
      const std::size_t blocks = (encoded.size() + store_block - 1) / store_block;
      if (blocks > 256) throw core::Error(core::ErrorCode::BadDataPackage, "data package too large for STORE DATA");
      for (std::size_t b = 0; b < blocks; ++b) {
        const bool last = b + 1 == blocks;
        const std::size_t off = b * store_block;
        core::SecureBytes part(encoded.begin() + static_cast<std::ptrdiff_t>(off),
                               encoded.begin() + static_cast<std::ptrdiff_t>(std::min(encoded.size(), off + store_block)));
        expect_ok(link, applet::store_data_command(static_cast<std::uint8_t>(b), last, std::move(part)), "STORE DATA",
                  0);
      }
      // No journal write here: an 'issued' row resumes the same way ('stored' was a commit per device
      // that told a resume nothing new: a personalized device goes on to the backup, a blank one is
      // stored again), so the next write is the backup's.
      step(Step::Store, res.chip_id);
    }
    res.identity_cert_pem = Botan::PEM_Code::encode(identity_der, "CERTIFICATE");

    // --- backup (step 6) and the restore drill ---------------------------------------------------
    std::string record_json;  // set when this call writes the outbox row
    if (row->state != "backed_up" && row->state != "published") {
      cur = Step::Backup;
      may_void = true;
      const auto b =
          expect_ok(link, applet::get_backup_command(!m_config.short_apdus), "GET DATA backup", core::kFlashMaxSize);
      const applet::BackupAnswer answer = applet::parse_backup_answer(b.data);
      if (answer.header.chip_id != chip)
        throw core::Error(errc::BackupMismatch, "backup package names chip " + answer.header.chip_id.str());
      const core::Bytes& backup = answer.backup;
      // The device opens the very bytes we will publish and proves the package inside is ours.
      const auto d =
          link.transmit(applet::restore_drill_command(backup, !m_config.short_apdus), applet::kDrillAnswerSize);
      // The device refusing its own backup is the issue's "backup does not open": say so, not just the SW.
      if (d.sw != core::sw::ok)
        throw core::Error(errc::BackupMismatch, "the backup does not open on the device (RESTORE DRILL answered " +
                                                    core::sw_text(d.sw) + ")");
      core::Bytes digest;
      try {
        digest = applet::parse_drill_answer(d.data);
      } catch (const core::FormatError& e) {
        throw core::Error(errc::BackupMismatch, e.what());
      }
      if (digest != row->package_digest)
        throw core::Error(errc::BackupMismatch, "restore drill digest differs from the package sent");
      step(Step::Backup, res.chip_id);

      // --- record (step 7): journal, secret DB and outbox in one statement -----------------------
      cur = Step::Record;
      may_void = false;
      core::Record record;
      record.chip_id = chip;
      record.imei = imei;
      record.backup = backup;
      record.certificates = {identity_der, m_keys.device_ca_cert.BER_encode()};
      // The secret DB keeps the communication key's check value; the key itself is re-derived on demand.
      if (kcv_hex.empty()) kcv_hex = core::to_hex(core::key_check_value(derive_comm_key(*m_keys.token, res.imei)));
      const std::string record_hash = record.hash();
      record_json = record.to_json_hashed(record_hash);
      db.step(kBackedUp, {*claim_id, res.chip_id, res.imei, sha256_hex(identity_der), sha256_hex(transport_der),
                          kcv_hex, m_config.station_id, record_json, record_hash});
      step(Step::Record, res.chip_id);
    }

    // --- publish (step 8) ----------------------------------------------------------------------
    cur = Step::Publish;
    res.journal_id = *claim_id;
    if (record_json.empty()) {
      const auto ob = db.with([&](core::pq::Connection& c) {
        return c.exec("SELECT record_json, published_at IS NOT NULL FROM journal.outbox WHERE chip_id = $1",
                      {res.chip_id});
      });
      if (ob.empty()) throw core::Error(errc::JournalConflict, "journal says backed up but the outbox has no record");
      if (ob.text(0, 1) != "t") record_json = ob.text(0, 0);
    }
    if (!record_json.empty()) {
      if (!m_publisher) {
        res.in_outbox = true;
        res.record_json = std::move(record_json);
        throw core::Error(errc::PublishPending, "no public DB configured; the record waits in the outbox");
      }
      PublishResult pr;
      std::chrono::milliseconds backoff(200);
      for (int attempt = 1; attempt <= std::max(1, m_config.publish_attempts); ++attempt) {
        pr = m_publisher->publish(record_json);
        if (pr.outcome != PublishOutcome::Unreachable) break;
        if (attempt < m_config.publish_attempts) std::this_thread::sleep_for(backoff), backoff *= 2;
      }
      if (pr.outcome == PublishOutcome::Published || pr.outcome == PublishOutcome::AlreadyPublished) {
        db.with([&](core::pq::Connection& c) { mark_published(c, res.chip_id, *claim_id); });
      } else {
        const bool refused = pr.outcome == PublishOutcome::Refused;
        db.with([&](core::pq::Connection& c) { note_publish_failure(c, res.chip_id, refused, pr.detail); });
        if (refused)
          throw core::Error(errc::PublishRejected, "public DB refused the record: " + pr.detail +
                                                       "; it is parked in the outbox (`keyline-station status`)");
        if (pr.outcome == PublishOutcome::Rejected)
          throw core::Error(errc::PublishRejected, "public DB refused the record: " + pr.detail +
                                                       "; the outbox tries it again (`keyline-station publish`)");
        res.in_outbox = true;
        throw core::Error(errc::PublishPending, "public DB unreachable (" + pr.detail +
                                                    "); the record waits in the outbox (`keyline-station publish`)");
      }
    }
    step(Step::Publish, res.chip_id);
    res.reached = Step::Done;
    res.done = true;
    return res;
  } catch (const std::exception& e) {
    res.reached = cur;
    const auto* ke = dynamic_cast<const core::Error*>(&e);
    res.error_code = ke ? ke->numeric() : 1;
    res.error = "chip " + (res.chip_id.empty() ? std::string("?") : res.chip_id) + ": step " + step_name(cur) + ": " +
                e.what();
    // A definite refusal (status word, backup mismatch) before the record is kept means this claim can
    // never complete: void it, so the IMEI is accounted for and never handed to another device.
    const bool definite = dynamic_cast<const DeviceRefusal*>(&e) ||
                          (ke && (ke->code() == errc::BackupMismatch || ke->code() == core::ErrorCode::BadBackupPackage ||
                                  ke->code() == core::ErrorCode::CertificateLint));
    if (claim_id && may_void && definite) {
      try {
        db.with([&](core::pq::Connection& c) { void_claim(c, *claim_id, res.error); });
        res.error += " (IMEI " + res.imei + " voided)";
      } catch (const std::exception&) {
        res.error += " (the claim stays in the journal and resumes on the next run)";
      }
    }
    return res;
  }
}

void note_publish_failure(core::pq::Connection& db, const std::string& chip_id, bool refused, const std::string& detail) {
  db.exec(
      "UPDATE journal.outbox SET attempts = attempts + 1, last_error = $2,"
      " refused_at = CASE WHEN $3 THEN now() END,"
      " next_attempt_at = now() + least(interval '30 s', interval '250 ms' * power(2, least(attempts, 7)))"
      " WHERE chip_id = $1 AND published_at IS NULL",
      {chip_id, detail.substr(0, 500), refused ? "true" : "false"});
}

long retry_refused(core::pq::Connection& db, const std::string& chip_id) {
  return db
      .exec("UPDATE journal.outbox SET refused_at = NULL, next_attempt_at = now()"
            " WHERE refused_at IS NOT NULL AND published_at IS NULL AND ($1 = '' OR chip_id = $1)",
            {chip_id})
      .affected();
}

DrainResult drain_outbox(core::pq::Connection& db, Publisher& publisher, int limit) {
  const auto rows = db.exec(
      "SELECT chip_id, device_id, record_json FROM journal.outbox WHERE published_at IS NULL AND refused_at IS NULL"
      " ORDER BY next_attempt_at LIMIT $1",
      {limit});
  DrainResult d;
  for (int i = 0; i < rows.rows(); ++i) {
    const auto pr = publisher.publish(rows.text(i, 2));
    if (pr.outcome == PublishOutcome::Published || pr.outcome == PublishOutcome::AlreadyPublished) {
      mark_published(db, rows.text(i, 0), rows.int64(i, 1));
      ++d.published;
    } else {
      const bool refused = pr.outcome == PublishOutcome::Refused;
      note_publish_failure(db, rows.text(i, 0), refused, pr.detail);
      ++(refused ? d.refused : d.pending);
    }
  }
  return d;
}

}  // namespace keyline::station
