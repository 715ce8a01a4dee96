#include "keyline/station/personalize.h"

#include <cstdio>
#include <memory>

#include "flow.h"
#include "keyline/core/chip_identity.h"
#include "keyline/core/error.h"
#include "keyline/core/log_format.h"
#include "keyline/station/errors.h"
#include "keyline/station/fault_hook.h"
#include "keyline/station/outbox_log.h"

namespace keyline::station {

const char* step_name(Step s) noexcept {
  switch (s) {
    case Step::Connect: return "connect";
    case Step::ReadDevice: return "read-device";
    case Step::Claim: return "claim";
    case Step::Attest: return "attest";
    case Step::Issue: return "issue";
    case Step::Store: return "store";
    case Step::Backup: return "backup";
    case Step::Record: return "record";
    case Step::Publish: return "publish";
    case Step::Done: return "done";
  }
  return "?";
}

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
  // One write per line: lines of concurrent workers never interleave (text, or JSON: core/log_format.h).
  m_log = [](const std::string& line) { core::log::say("keyline-station: " + line); };
  check_personalization_config(config);
  if (config.channel == "scp11a") {
    m_vendors = core::chip::load_vendor_list(config.chip_vendors);
    if (keys.oce_chain.empty())
      throw core::Error(errc::KeysMissing, "channel scp11a needs the station's OCE certificate (" +
                                               std::string(pki_file::oce) + " for token key " + key_label::oce +
                                               "): run `keyline-station keys init` (after install-cert with an "
                                               "offline root)");
  }
  // Crash tests (fault_hook.h): a no-op unless the test program installed a fault hook.
  if (fault_hook_installed()) m_hook = [](Step s, const std::string&) { fault_point(step_name(s)); };
}

const Botan::X509_Certificate& Personalizer::issuer_of(const core::Bytes& identity_der) const {
  try {
    const Botan::X509_Certificate cert(identity_der);
    for (const auto& ca : m_other_issuers)
      if (!ca.subject_key_id().empty() && cert.authority_key_id() == ca.subject_key_id()) return ca;
  } catch (const std::exception&) {
    // Not ours to judge here: the record's checks say what is wrong with it.
  }
  return m_keys.device_ca_cert;
}

void Personalizer::step(Step s, const std::string& chip_id) {
  if (m_hook) m_hook(s, chip_id);
}

DeviceResult Personalizer::personalize(const std::string& address, core::pq::Connection& db) {
  JournalDb j(db);
  return personalize(address, j);
}

// The address overload opens the channel itself; an address that is neither HOST:PORT nor
// pcsc:NAME fails at the connect step like an unreachable device.
DeviceResult Personalizer::personalize(const std::string& address, JournalDb& db) {
  std::unique_ptr<core::DeviceChannel> channel;
  try {
    channel = core::open_device_channel(address, channel_options());
  } catch (const std::exception& e) {
    DeviceResult res;
    res.endpoint = address;
    res.reached = Step::Connect;
    const auto* ke = dynamic_cast<const core::Error*>(&e);
    res.error_code = ke ? ke->numeric() : 1;
    res.error = std::string("chip ?: step ") + step_name(Step::Connect) + ": " + e.what();
    return res;
  }
  return personalize(*channel, db);
}

DeviceResult Personalizer::personalize(core::DeviceChannel& channel, JournalDb& db) {
  DeviceResult res;
  res.endpoint = channel.address();
  Flow flow(*this, channel, db, res);
  try {
    flow.run();
    return res;
  } catch (const std::exception& e) {
    const Step cur = flow.current();
    res.reached = cur;
    const auto* ke = dynamic_cast<const core::Error*>(&e);
    res.error_code = ke ? ke->numeric() : 1;
    res.error = "chip " + (res.chip_id.empty() ? std::string("?") : res.chip_id) + ": step " + step_name(cur) + ": " +
                e.what();
    // A definite refusal (status word, backup mismatch) before the record is kept means this claim can
    // never complete: void it, so the IMEI is accounted for and never handed to another device.
    // A statement that fails its checks (wrong challenge, replayed, another chip's, another key type)
    // is the chip answering "no" for this claim: docs/station.md voids its IMEI.
    const bool definite = dynamic_cast<const DeviceRefusal*>(&e) ||
                          (ke && (ke->code() == errc::BackupMismatch || ke->code() == core::ErrorCode::BadBackupPackage ||
                                  ke->code() == core::ErrorCode::CertificateLint ||
                                  ke->code() == core::ErrorCode::BadAttestation ||
                                  ke->code() == core::ErrorCode::AttestationMismatch));
    res.chip_refused = ke && (ke->code() == core::ErrorCode::ChipNotGenuine || ke->code() == core::ErrorCode::ChipIdMismatch);
    if (flow.claim_id() && flow.may_void() && definite) {
      try {
        db.with([&](core::pq::Connection& c) { void_claim(c, *flow.claim_id(), res.error); });
        res.error += " (IMEI " + res.imei + " voided)";
      } catch (const std::exception&) {
        res.error += " (the claim stays in the journal and resumes on the next run)";
      }
    }
    return res;
  }
}

void Personalizer::note_short_apdus(const std::string& address, const std::string& why) {
  {
    std::lock_guard<std::mutex> l(m_said_mutex);
    if (!m_said_short.insert(address).second) return;
  }
  m_log(address + ": extended-length APDUs refused (" + why.substr(0, 200) +
        "); its devices get short APDUs from now on (said once per address)");
}

core::ChannelOptions Personalizer::channel_options() const {
  core::ChannelOptions o;
  // One extended APDU carries a whole package, backup or drill; short APDUs chain at 255 bytes.
  o.max_chunk = m_config.short_apdus ? 255 : 65535;
  return o;
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
      if (pr.leaf_index) store_leaf_indexes(db, {{rows.text(i, 0), *pr.leaf_index}});
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
