// The flow's steps after the claim: issue, store, check backup, record, publish.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <thread>

#include <botan/curve25519.h>
#include <botan/pem.h>
#include <botan/pk_keys.h>
#include <botan/system_rng.h>

#include "flow.h"
#include "keyline/core/applet_protocol.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/data_package.h"
#include "keyline/core/flash_image.h"
#include "keyline/core/record.h"
#include "keyline/station/custody.h"
#include "keyline/station/outbox_log.h"
#include "line_metrics.h"  // token operation latency (docs/station.md, "Metrics and the line page")

namespace keyline::station {

namespace applet = core::applet;

namespace {

// With short APDUs (--short-apdus, or a device or reader that refuses extended length) STORE DATA goes
// in 240-byte blocks and long answers come back in 256-byte pieces; otherwise one extended APDU
// carries the whole ~3 KB package (ISO 7816-4 5.1: extended Lc up to 65535), cutting ~40 round trips
// per device to ~8, which is what bounds a line's throughput.
constexpr std::size_t kShortStoreBlock = 240;
constexpr std::size_t kExtendedStoreBlock = 65535;

// Issued: certificates and package digest, with both "sign.done" rows.
constexpr const char* kIssued =
    "WITH u AS (UPDATE journal.device SET state = 'issued', identity_cert = $2, transport_cert = $3,"
    " package_digest = $4, master_version = $10, updated_at = now() WHERE id = $1)"
    " INSERT INTO journal.audit (station_id, event, chip_id, imei, cert_kind, detail)"
    " VALUES ($5, 'sign.done', $6, $7, 'identity', $8), ($5, 'sign.done', $6, $7, 'transport', $9)";

// Backed up: wrapped keys wiped, secret DB row and outbox row, all or nothing.
constexpr const char* kBackedUp =
    "WITH u AS (UPDATE journal.device SET state = 'backed_up', identity_wrapped = NULL, transport_wrapped = NULL,"
    " updated_at = now() WHERE id = $1),"
    " s AS (INSERT INTO secret.device (chip_id, imei, identity_cert_sha256, transport_cert_sha256, comm_key_kcv,"
    " station_id, key_source, identity_statement_sha256, transport_statement_sha256, master_version)"
    " VALUES ($2, $3, $4, $5, $6, $7, $10, nullif($11, ''), nullif($12, ''), $13) ON CONFLICT (chip_id) DO NOTHING)"
    " INSERT INTO journal.outbox (chip_id, device_id, record_json, record_hash) VALUES ($2, $1, $8, $9)"
    " ON CONFLICT (chip_id) DO NOTHING";

}  // namespace

// --- issue (step 4): communication key, both certificates, the package -------------------------
void Flow::issue() {
  const StationConfig& config = m_p.m_config;
  // The version taken once at the line's start (StationKeys::open): a roll mid-run takes effect on
  // the next run, so one run's devices share one version.
  m_master_version = m_p.m_keys.master_version;
  const core::SecureBytes comm_key = line_detail::timed(line_detail::TokenOp::Derive, [&] {
    return derive_comm_key(*m_p.m_keys.token, m_res.imei, *m_chip, m_master_version);
  });
  m_kcv_hex = core::to_hex(core::key_check_value(comm_key));
  sign_certificates();

  core::DataPackage pkg;
  pkg.imei = *m_imei;
  pkg.station_id = config.station_id;
  pkg.issued_at = static_cast<std::uint64_t>(std::time(nullptr));
  pkg.identity_cert = m_identity_der;
  pkg.transport_cert = m_transport_der;
  pkg.ca_chain.push_back(m_p.m_keys.device_ca_cert.BER_encode());
  m_source->fill_package(pkg, m_keys);
  pkg.comm_key = comm_key;
  pkg.master_version = static_cast<std::uint8_t>(m_master_version);  // the device's SCP03 KVN
  pkg.app_items = m_p.m_app_items;
  m_package = pkg.encode();
  // Keys made in the chip: the device seals a package the station never sees whole, so the drill
  // is checked against the digest of the part the station sent (core::station_digest).
  const core::Bytes digest = pkg.keys_in_device ? core::station_digest(pkg) : core::package_digest(m_package);
  m_db.step(kIssued, {*m_claim_id, m_identity_der, m_transport_der, digest, config.station_id, m_res.chip_id, m_res.imei,
                      "certificate SHA-256 " + sha256_hex(m_identity_der),
                      "certificate SHA-256 " + sha256_hex(m_transport_der), m_master_version});
  m_row->package_digest = digest;
}

void Flow::sign_certificates() {
  const StationConfig& config = m_p.m_config;
  StationKeys& keys = m_p.m_keys;
  const core::Imei& imei = *m_imei;
  // The kernel's generator (getrandom): a call is a system call, where AutoSeeded_RNG's HMAC_DRBG
  // spent ~8% of the station's CPU re-keying SHA-512 HMACs for the many small requests a device makes.
  Botan::RandomNumberGenerator& rng = Botan::system_rng();
  // Both certificates are for the halves derived from the private keys, never for a public half read
  // from a database.
  const std::unique_ptr<Botan::Public_Key> identity_key = m_source->identity_key(m_keys);
  const Botan::Curve25519_PublicKey transport_pub(m_keys.pub.transport);

  // Every sign.begin ends in sign.done or sign.failed, so the audit trail accounts for each use of
  // the CA key. The failure detail is a lint rule or a token message, never key material.
  const auto audit_rows = [&](const std::vector<AuditRow>& rows) {
    m_db.with([&](core::pq::Connection& c) { audit(c, config.station_id, m_res.chip_id, m_res.imei, rows); });
  };
  if (!m_begin_logged)
    audit_rows({{"sign.begin", "identity", subject_detail(m_keys.pub.identity)},
                {"sign.begin", "transport", subject_detail(m_keys.pub.transport)}});
  const auto sign_failed = [&](const char* kind, const std::exception& e, std::vector<AuditRow> also) {
    also.insert(also.begin(), {"sign.failed", kind, std::string(e.what()).substr(0, 300)});
    try {
      audit_rows(also);
    } catch (const std::exception&) {
      // The signing error is the one to report; a dead DB shows up on the next statement.
    }
  };
  try {
    m_identity_der = line_detail::timed(line_detail::TokenOp::Sign, [&] {
      return core::issue_identity_certificate_der(keys.device_ca_cert, *keys.device_ca_key, *identity_key,
                                                  imei, *m_chip, config.hw_type, rng);
    });
  } catch (const std::exception& e) {
    sign_failed("identity", e, {{"sign.failed", "transport", "not signed: the identity certificate failed first"}});
    throw;
  }
  try {
    m_transport_der = line_detail::timed(line_detail::TokenOp::Sign, [&] {
      return core::issue_transport_certificate_der(keys.device_ca_cert, *keys.device_ca_key, transport_pub,
                                                   imei, *m_chip, config.hw_type, rng);
    });
  } catch (const std::exception& e) {
    sign_failed("transport", e, {{"sign.done", "identity", "certificate SHA-256 " + sha256_hex(m_identity_der)}});
    throw;
  }
}

// --- store (step 5): STORE DATA of the package -------------------------------------------------
void Flow::store() {
  // Under SCP11a each block is one secured command: at most core::scp11::kMaxPlainPiece bytes.
  const std::size_t block =
      m_secure ? core::scp11::kMaxPlainPiece : m_extended ? kExtendedStoreBlock : kShortStoreBlock;
  const std::size_t blocks = (m_package.size() + block - 1) / block;
  if (blocks > 256) throw core::Error(core::ErrorCode::BadDataPackage, "data package too large for STORE DATA");
  try {
    for (std::size_t b = 0; b < blocks; ++b) {
      const std::size_t off = b * block;
      core::SecureBytes part(m_package.begin() + static_cast<std::ptrdiff_t>(off),
                             m_package.begin() + static_cast<std::ptrdiff_t>(std::min(m_package.size(), off + block)));
      expect_ok(applet::store_data_command(static_cast<std::uint8_t>(b), b + 1 == blocks, std::move(part)),
                "STORE DATA", 0);
    }
  } catch (const core::Error& e) {
    // Never sent again in the other form here: the device may hold part of the package. The claim
    // stays (no definite refusal), and the next run on this channel stores it in short APDUs.
    if (m_extended && e.code() == core::ErrorCode::ExtendedLengthRefused) fall_back_to_short(e.what());
    throw;
  }
  m_package.clear();
  // No journal write here: an 'issued' row resumes the same way ('stored' was a commit per device
  // that told a resume nothing new: a personalized device goes on to the backup, a blank one is
  // stored again), so the next write is the backup's.
  m_res.identity_cert_pem = Botan::PEM_Code::encode(m_identity_der, "CERTIFICATE");
}

// --- check backup (step 6): GET DATA backup and the restore drill ------------------------------
void Flow::check_backup() {
  const auto b = send_read_only([](bool extended) { return applet::get_backup_command(extended); }, core::kFlashMaxSize);
  if (b.sw != core::sw::ok) throw DeviceRefusal("GET DATA backup", b.sw);
  const applet::BackupAnswer answer = applet::parse_backup_answer(b.data);
  if (answer.header.chip_id != *m_chip)
    throw core::Error(errc::BackupMismatch, "backup package names chip " + answer.header.chip_id.str());
  m_backup = answer.backup;
  // The device opens the very bytes we will publish and proves the package inside is ours.
  const auto d = send_read_only(
      [this](bool extended) { return applet::restore_drill_command(m_backup, extended); }, applet::kDrillAnswerSize);
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
  if (digest != m_row->package_digest)
    throw core::Error(errc::BackupMismatch, "restore drill digest differs from the package sent");
}

// --- record (step 7): journal, secret DB and outbox in one statement ---------------------------
void Flow::record() {
  const StationConfig& config = m_p.m_config;
  core::Record record;
  record.chip_id = *m_chip;
  record.imei = *m_imei;
  record.backup = m_backup;
  // A device resumed after a failover holds the primary's certificate: its record names that CA.
  record.certificates = {m_identity_der, m_p.issuer_of(m_identity_der).BER_encode()};
  // Third, where readers of before see one more certificate off the chain (docs/decisions.md, "The
  // transport certificate in the public record"): a third party seals to the device with it.
  if (!m_transport_der.empty()) record.certificates.push_back(m_transport_der);
  // The secret DB keeps the communication key's check value; the key itself is re-derived on demand.
  if (m_kcv_hex.empty())
    m_kcv_hex = core::to_hex(
        core::key_check_value(derive_comm_key(*m_p.m_keys.token, m_res.imei, *m_chip, m_master_version)));
  const std::string record_hash = record.hash();
  m_record_json = record.to_json_hashed(record_hash);
  m_db.step(kBackedUp, {*m_claim_id, m_res.chip_id, m_res.imei, sha256_hex(m_identity_der), sha256_hex(m_transport_der),
                        m_kcv_hex, config.station_id, m_record_json, record_hash, m_source->name(),
                        m_statement_sha256[0], m_statement_sha256[1], m_master_version});
}

// --- publish (step 8): the public DB holds the record ------------------------------------------
void Flow::publish() {
  m_res.journal_id = *m_claim_id;
  if (m_record_json.empty()) {
    const auto ob = m_db.with([&](core::pq::Connection& c) {
      return c.exec("SELECT record_json, published_at IS NOT NULL FROM journal.outbox WHERE chip_id = $1",
                    {m_res.chip_id});
    });
    if (ob.empty()) throw core::Error(errc::JournalConflict, "journal says backed up but the outbox has no record");
    if (ob.text(0, 1) != "t") m_record_json = ob.text(0, 0);
  }
  if (m_record_json.empty()) return;
  Publisher* publisher = m_p.m_publisher;
  if (!publisher) {
    m_res.in_outbox = true;
    m_res.record_json = std::move(m_record_json);
    throw core::Error(errc::PublishPending, "no public DB configured; the record waits in the outbox");
  }
  const int attempts = m_p.m_config.publish_attempts;
  PublishResult pr;
  std::chrono::milliseconds backoff(200);
  for (int attempt = 1; attempt <= std::max(1, attempts); ++attempt) {
    pr = publisher->publish(m_record_json);
    if (pr.outcome != PublishOutcome::Unreachable) break;
    if (attempt < attempts) std::this_thread::sleep_for(backoff), backoff *= 2;
  }
  if (pr.outcome == PublishOutcome::Published || pr.outcome == PublishOutcome::AlreadyPublished) {
    m_db.with([&](core::pq::Connection& c) {
      mark_published(c, m_res.chip_id, *m_claim_id);
      if (pr.leaf_index) store_leaf_indexes(c, {{m_res.chip_id, *pr.leaf_index}});
    });
    return;
  }
  const bool refused = pr.outcome == PublishOutcome::Refused;
  m_db.with([&](core::pq::Connection& c) { note_publish_failure(c, m_res.chip_id, refused, pr.detail); });
  if (refused)
    throw core::Error(errc::PublishRejected, "public DB refused the record: " + pr.detail +
                                                 "; it is parked in the outbox (`keyline-station status`)");
  if (pr.outcome == PublishOutcome::Rejected)
    throw core::Error(errc::PublishRejected, "public DB refused the record: " + pr.detail +
                                                 "; the outbox tries it again (`keyline-station publish`)");
  m_res.in_outbox = true;
  throw core::Error(errc::PublishPending, "public DB unreachable (" + pr.detail +
                                              "); the record waits in the outbox (`keyline-station publish`)");
}

}  // namespace keyline::station
