// The flow's frame (run, the route table), the device channel's use, read-device and claim.
#include "flow.h"

#include <stdexcept>

#include <botan/hash.h>
#include <botan/hex.h>
#include <botan/pem.h>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/cplc.h"

namespace keyline::station {

namespace applet = core::applet;

namespace {

// The journal's statements. Each step that changes the journal is one statement (data-modifying
// WITH clauses, PostgreSQL 15 manual section 7.8.4: all of them run, in one snapshot, and commit or
// fail together), so a step costs one round trip and one durable commit, not BEGIN, N statements and
// COMMIT: on a line the database's per-statement and per-commit work is what bounds devices/s.
//
// Claim: the IMEI comes from the CTE "i"; the spent list, the journal row and both "sign.begin" rows
// commit with it ($1 chip, $2 station, $3..$6 wrapped keys and public halves, $7/$8 audit details, $9
// channel, $10 key source). Keys generated in the device are not known yet: no sign.begin rows then
// ($7 empty), the issue step writes them once the statements are checked.
#define KEYLINE_CLAIM_TAIL                                                                                           \
  " s AS (INSERT INTO pool.imei_spent (imei) SELECT imei FROM i ON CONFLICT DO NOTHING),"                          \
  " d AS (INSERT INTO journal.device (chip_id, imei, station_id, state, identity_wrapped, transport_wrapped,"      \
  "  identity_public, transport_public, channel, key_source)"                                                       \
  "  SELECT $1::text, imei, $2::text, 'claimed', $3::bytea, $4::bytea, $5::bytea, $6::bytea, $9::text, $10::text"   \
  "  FROM i RETURNING id, imei),"                                                                                    \
  " a AS (INSERT INTO journal.audit (station_id, event, chip_id, imei, cert_kind, detail)"                         \
  "  SELECT $2::text, 'sign.begin', $1::text, d.imei, k.kind, k.detail FROM d,"                                     \
  "  (VALUES (1, 'identity', $7::text), (2, 'transport', $8::text)) AS k (n, kind, detail)"                          \
  "  WHERE $7::text <> '' ORDER BY k.n)"                                                                              \
  " SELECT id, imei FROM d"
// The lowest free IMEI leaves the pool in the same statement (SKIP LOCKED: two stations never wait
// on, or take, the same row).
constexpr const char* kClaimNextImei =
    "WITH c AS (SELECT imei FROM pool.imei ORDER BY imei LIMIT 1 FOR UPDATE SKIP LOCKED),"
    " i AS (DELETE FROM pool.imei p USING c WHERE p.imei = c.imei RETURNING p.imei)," KEYLINE_CLAIM_TAIL;
// The key source took the IMEI ($11) earlier in the same transaction.
constexpr const char* kClaimGivenImei = "WITH i AS (SELECT $11::text AS imei)," KEYLINE_CLAIM_TAIL;
#undef KEYLINE_CLAIM_TAIL

std::optional<JournalRow> live_row(JournalDb& db, const std::string& chip) {
  const auto r = db.step(
      "SELECT id, imei, state, identity_wrapped, transport_wrapped, identity_public, transport_public,"
      " identity_cert, transport_cert, package_digest, coalesce(key_source, ''),"
      " coalesce(identity_statement_sha256, ''), coalesce(transport_statement_sha256, ''),"
      " coalesce(master_version, 1), station_id FROM journal.device WHERE chip_id = $1 AND state <> 'void'",
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
  j.key_source = r.text(0, 10);
  j.identity_statement_sha256 = r.text(0, 11);
  j.transport_statement_sha256 = r.text(0, 12);
  j.master_version = static_cast<int>(r.int64(0, 13));
  j.station_id = r.text(0, 14);
  return j;
}

}  // namespace

std::string sha256_hex(const core::Bytes& b) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  return Botan::hex_encode(h->process(b));
}

std::string subject_detail(const core::Bytes& subject_key) { return "subject key SHA-256 " + sha256_hex(subject_key); }

void audit(core::pq::Connection& db, const std::string& station, const std::string& chip, const std::string& imei,
           const std::vector<AuditRow>& rows) {
  core::pq::run_transaction(db, core::pq::Isolation::ReadCommitted, [&](core::pq::Transaction& tx) {
    for (const auto& r : rows)
      tx.exec(
          "INSERT INTO journal.audit (station_id, event, chip_id, imei, cert_kind, detail) VALUES ($1,$2,$3,$4,$5,$6)",
          {station, r.event, chip, imei, r.kind, r.detail});
  });
}

void void_claim(core::pq::Connection& db, std::int64_t id, const std::string& reason) {
  db.exec(
      "UPDATE journal.device SET state = 'void', void_reason = $2, identity_wrapped = NULL,"
      " transport_wrapped = NULL, updated_at = now() WHERE id = $1 AND state IN ('claimed','issued','stored')",
      {id, reason.substr(0, 500)});
}

JournalState parse_journal_state(const std::string& state) {
  if (state == "claimed") return JournalState::Claimed;
  // 'stored' was written after STORE DATA by earlier versions; it told a resume nothing 'issued' does not.
  if (state == "issued" || state == "stored") return JournalState::Issued;
  if (state == "backed_up") return JournalState::BackedUp;
  if (state == "published") return JournalState::Published;
  throw core::Error(errc::JournalConflict, "journal state '" + state.substr(0, 40) + "' is not one this station knows");
}

const Route& route(JournalState state, bool personalized) {
  using S = Step;
  using R = Refusal;
  struct Row {
    JournalState state;
    bool personalized;
    Route route;
  };
  // journal row       device       refusal or steps
  static const Row table[] = {
      {JournalState::None, false, {R::None, {S::Claim, S::Issue, S::Store, S::Backup, S::Record, S::Publish}}},
      // Issue #5: a personalized device is refused before any IMEI is claimed.
      {JournalState::None, true, {R::Personalized, {}}},
      // The row's IMEI and keys (or a new claim when migration 0006 wiped its blobs).
      {JournalState::Claimed, false, {R::None, {S::Claim, S::Issue, S::Store, S::Backup, S::Record, S::Publish}}},
      // A claim that never reached STORE DATA ('issued' is journaled before it) cannot be this device's
      // personalization: it is voided, so the journal holds no half-issued row.
      {JournalState::Claimed, true, {R::PersonalizedVoidClaim, {}}},
      // STORE DATA may or may not have completed: a blank device is issued and stored again.
      {JournalState::Issued, false, {R::None, {S::Claim, S::Issue, S::Store, S::Backup, S::Record, S::Publish}}},
      // It did: the backup is checked against the digest kept.
      {JournalState::Issued, true, {R::None, {S::Claim, S::Backup, S::Record, S::Publish}}},
      {JournalState::BackedUp, false, {R::LostFlash, {}}},
      // Everything but the publication (from the outbox).
      {JournalState::BackedUp, true, {R::None, {S::Claim, S::Publish}}},
      {JournalState::Published, false, {R::LostFlash, {}}},
      // This very station finished the device: a second run is a refusal, not a "done".
      {JournalState::Published, true, {R::Personalized, {}}},
  };
  for (const auto& r : table)
    if (r.state == state && r.personalized == personalized) return r.route;
  throw std::logic_error("no route for a journal state");  // the table covers every pair
}

Flow::Flow(Personalizer& owner, core::DeviceChannel& channel, JournalDb& db, DeviceResult& result)
    : m_p(owner), m_channel(channel), m_db(db), m_res(result) {}

void Flow::run() {
  m_cur = Step::Connect;
  connect();
  m_cur = Step::ReadDevice;
  read_device();
  m_p.step(Step::ReadDevice, m_res.chip_id);
  const Route& r = route(m_row ? parse_journal_state(m_row->state) : JournalState::None, m_personalized);
  for (const Step s : r.steps) {
    run_step(s);
    // Keys made in the chip: generated and attested under this claim before anything is issued
    // (again on a resume: a session that is gone took its keys' use with it, docs/station.md).
    if (s == Step::Claim && m_source->keys_in_device() && !m_personalized) run_step(Step::Attest);
  }
  m_res.reached = Step::Done;
  m_res.done = true;
}

void Flow::run_step(Step s) {
  m_cur = s;
  switch (s) {
    case Step::Claim: claim(); break;
    case Step::Attest: attest(); break;
    case Step::Issue: issue(); break;
    case Step::Store: store(); break;
    case Step::Backup: check_backup(); break;
    case Step::Record: record(); break;
    case Step::Publish: publish(); break;
    case Step::Connect:
    case Step::ReadDevice:
    case Step::Done: throw std::logic_error(std::string("not a route step: ") + step_name(s));
  }
  m_p.step(s, m_res.chip_id);
}

void Flow::connect() {
  m_source = make_key_source(m_p.m_config.key_source, *m_p.m_keys.token);
  m_res.key_source = m_source->name();
  m_res.channel = m_p.m_config.channel;
  if (!m_channel.connected()) m_channel.connect();
}

// --- read the device (step 4 of seed 002: the chip ID from read-only storage) ------------------
void Flow::read_device() {
  // --short-apdus: the channel itself is told, so that it chains and cuts answers at short sizes
  // whoever opened it.
  if (m_p.m_config.short_apdus) m_channel.disable_extended_length();
  m_extended = m_channel.extended_length();
  expect_ok(applet::select_command(), "SELECT personalization applet", 0);
  // The one STATUS layout (core::applet::parse_status): any other length or byte is refused here,
  // before anything is claimed.
  const applet::Status status =
      applet::parse_status(expect_ok(applet::status_command(), "STATUS", applet::kStatusSizeWithImei).data);
  const auto cplc_r = read_cplc(3 + core::kCplcSize);  // 9F 7F 2A || CPLC
  m_chip = core::Cplc::parse(cplc_r.data.data(), cplc_r.data.size()).chip_id();
  m_res.chip_id = m_chip->str();
  if (status.chip_id != *m_chip) throw core::Error(errc::DeviceRefused, "STATUS and CPLC name different chips");
  // Before the journal is even read: a chip that is not genuine gets nothing, not even a look-up.
  open_channel();
  m_personalized = status.personalized();
  m_row = live_row(m_db, m_res.chip_id);
  const Route& r = route(m_row ? parse_journal_state(m_row->state) : JournalState::None, m_personalized);
  if (r.refusal != Refusal::None)
    refuse(r.refusal, status.imei ? std::optional<std::string>(status.imei->str()) : std::nullopt);
}

core::ResponseApdu Flow::read_cplc(std::size_t max_answer) {
  if (m_extended) {
    // The session's first extended command, and one that changes nothing on the device: a device or
    // reader without extended length says so here, before STORE DATA, so that a package is never
    // half stored in one form and sent again in the other.
    core::CommandApdu probe = applet::get_cplc_command();
    probe.extended = true;
    try {
      const auto r = m_channel.transmit(probe, max_answer);
      if (r.sw == core::sw::ok) return r;
      if (r.sw != core::sw::wrong_length) throw DeviceRefusal("GET DATA CPLC", r.sw);
      fall_back_to_short("GET DATA CPLC in extended form answered " + core::sw_text(r.sw));
    } catch (const core::Error& e) {
      if (e.code() != core::ErrorCode::ExtendedLengthRefused) throw;
      fall_back_to_short(e.what());
    }
  }
  return expect_ok(applet::get_cplc_command(), "GET DATA CPLC", max_answer);
}

void Flow::refuse(Refusal why, const std::optional<std::string>& device_imei) {
  if (why == Refusal::LostFlash)
    throw core::Error(errc::AlreadyPersonalized, "device was personalized as IMEI " + m_row->imei +
                                                     " and has lost its flash: restore it with keyline-recovery");
  if (why == Refusal::PersonalizedVoidClaim)
    m_db.with([&](core::pq::Connection& c) {
      void_claim(c, m_row->id, "device was personalized elsewhere after the claim");
    });
  throw core::Error(errc::AlreadyPersonalized,
                    "device is already personalized" + (device_imei ? " as IMEI " + *device_imei : std::string()) +
                        "; nothing was claimed (reset it to blank on purpose to personalize it again)");
}

// --- claim (step 3): IMEI and keys leave the pool in the statement that journals them ----------
void Flow::claim() {
  if (m_row && !m_personalized) {
    const std::string why = unresumable_reason();
    if (!why.empty()) {
      m_db.with([&](core::pq::Connection& c) { void_claim(c, m_row->id, why + "; a new IMEI was claimed"); });
      m_row.reset();
    }
  }
  if (m_row)
    resume_claim();
  else
    new_claim();
  m_imei = core::Imei::parse(m_res.imei);
  if (m_personalized) m_res.identity_cert_pem = Botan::PEM_Code::encode(m_identity_der, "CERTIFICATE");
}

std::string Flow::unresumable_reason() const {
  // Keys the chip made cannot become keys the station holds, nor the other way round.
  if (m_row->key_source != m_source->name() && (m_row->key_source == "device" || m_source->keys_in_device()))
    return "claimed with key source " + m_row->key_source + ", resumed with " + m_source->name();
  // Migration 0006 wiped the blobs wrapped before rows were bound (docs/decisions.md): a blank
  // device cannot get those keys back, so this claim can never complete and a new one is made.
  if (m_row->identity_wrapped.empty() && m_row->key_source != "device")
    return "its keys were wrapped before migration 0006 and are void";
  // The wrapping key never leaves its token: keys another station wrapped (the primary, after a
  // failover; docs/custody.md "Failover") do not open here. Said as such, not as a 4013, so the
  // line's halt on key sets that do not open never counts them.
  if (m_row->station_id != m_p.m_config.station_id && m_row->key_source != "device")
    return "its keys were wrapped by station " + m_row->station_id + "'s token";
  return {};
}

void Flow::resume_claim() {
  m_res.imei = m_row->imei;
  m_claim_id = m_row->id;
  m_identity_der = m_row->identity_cert;
  m_transport_der = m_row->transport_cert;
  // An issued device holds the comm key of the version it was issued with, whatever the token's newest.
  m_master_version = m_row->master_version;
  // A personalized device goes on to the backup check; a blank one needs its keys again: they stay
  // with this chip, unwrapped for this chip's row (the wrapping key never leaves the token).
  m_statement_sha256[0] = m_row->identity_statement_sha256;
  m_statement_sha256[1] = m_row->transport_statement_sha256;
  if (m_personalized || m_source->keys_in_device()) return;  // the attest step generates them again
  try {
    m_keys = m_source->reopen(*m_chip, {m_row->id, m_row->identity_wrapped, m_row->transport_wrapped,
                                        m_row->identity_public, m_row->transport_public});
  } catch (const core::Error& e) {
    if (e.code() != errc::KeyMismatch) throw;
    m_db.with([&](core::pq::Connection& c) { void_claim(c, m_row->id, e.what()); });
    throw core::Error(errc::KeyMismatch, std::string(e.what()) + "; nothing was certified (IMEI " + m_res.imei + " voided)");
  }
}

void Flow::new_claim() {
  m_keys = m_source->claim(m_db, [this](const ClaimExec& exec, const std::string& imei, const DeviceKeys& keys) {
    write_claim(exec, imei, keys);
  });
  m_begin_logged = !m_source->keys_in_device();
  m_row = JournalRow{};
  m_row->key_source = m_source->name();
  m_row->id = *m_claim_id;
  m_row->imei = m_res.imei;
  m_row->state = "claimed";
  m_row->identity_public = m_keys.pub.identity;
  m_row->transport_public = m_keys.pub.transport;
}

void Flow::write_claim(const ClaimExec& exec, const std::string& imei, const DeviceKeys& keys) {
  // The journal's blobs are bound to this chip's row (a pool blob is bound to its pool row).
  // Keys made in the chip have no private half here: nothing is wrapped, and the public halves come
  // with the attest step.
  core::Pkcs11Token& token = *m_p.m_keys.token;
  const bool held = !m_source->keys_in_device();
  const core::Bytes idw = held ? token.wrap_data(key_label::wrap, keys.identity_pkcs8,
                                                 journal_key_aad(*m_chip, KeyKind::Identity, keys.pub.identity))
                               : core::Bytes{};
  const core::Bytes trw = held ? token.wrap_data(key_label::wrap, keys.transport_raw,
                                                 journal_key_aad(*m_chip, KeyKind::Transport, keys.pub.transport))
                               : core::Bytes{};
  core::pq::Params p{m_res.chip_id,
                     m_p.m_config.station_id,
                     idw,
                     trw,
                     keys.pub.identity,
                     keys.pub.transport,
                     held ? subject_detail(keys.pub.identity) : std::string(),
                     held ? subject_detail(keys.pub.transport) : std::string(),
                     m_res.channel,
                     m_res.key_source};
  if (!imei.empty()) p.push_back(imei);
  try {
    const auto r = exec(imei.empty() ? kClaimNextImei : kClaimGivenImei, std::move(p));
    if (r.empty()) throw core::Error(errc::PoolEmpty, "no IMEI left in the pool: add some with `keyline-station pool generate`");
    m_claim_id = r.int64(0, 0);
    m_res.imei = r.text(0, 1);
  } catch (const core::DbError& e) {
    if (e.code() != core::ErrorCode::DbUniqueViolation) throw;
    // Another station holds this chip right now; the failed statement returns our IMEI to the pool.
    throw core::Error(errc::JournalConflict, "another station is personalizing this chip");
  }
}

// --- the device channel ------------------------------------------------------------------------
void Flow::fall_back_to_short(const std::string& why) {
  m_extended = false;
  m_channel.disable_extended_length();
  m_p.note_short_apdus(m_channel.address(), why);
}

core::ResponseApdu Flow::send(const core::CommandApdu& c, std::size_t max_answer) {
  // A channel without extended length (or told so) chains long data in 255-byte parts and asks for
  // at most 256 bytes a round itself (core::DeviceChannel); the flow builds the short form of the
  // commands whose form it chooses (STORE DATA blocks, GET DATA backup, the drill).
  return link().transmit(c, max_answer);
}

core::ResponseApdu Flow::expect_ok(const core::CommandApdu& c, const char* what, std::size_t max_answer) {
  // max_answer: the longest answer the command has (docs/protocol.md section 2a); more is refused.
  auto r = send(c, max_answer);
  if (r.sw != core::sw::ok) throw DeviceRefusal(what, r.sw);
  return r;
}

core::ResponseApdu Flow::send_read_only(const std::function<core::CommandApdu(bool)>& make, std::size_t max_answer) {
  if (m_extended) {
    try {
      return send(make(true), max_answer);
    } catch (const core::Error& e) {
      if (e.code() != core::ErrorCode::ExtendedLengthRefused) throw;
      fall_back_to_short(e.what());
    }
  }
  return send(make(false), max_answer);
}

}  // namespace keyline::station
