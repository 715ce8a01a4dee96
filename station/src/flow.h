// One device's personalization as the steps of seed 002 (personalize.h): each step one member
// function, the state between them members, and route() (flow.cpp) choosing which steps run.
//   flow.cpp        run(), the route table, read-device and claim
//   flow_channel.cpp  the chip's vendor identity, the SCP11a session, attest (--key-source device)
//   flow_steps.cpp  issue, store, check backup, record, publish
// Private to the station library.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "keyline/core/apdu.h"
#include "keyline/core/chip_identity.h"
#include "keyline/core/scp11.h"
#include "keyline/core/cplc.h"
#include "keyline/core/device_channel.h"
#include "keyline/core/error.h"
#include "keyline/core/imei.h"
#include "keyline/station/errors.h"
#include "keyline/station/key_source.h"
#include "keyline/station/personalize.h"

namespace keyline::station {

// A status word other than 9000 is the device refusing: a definite answer, unlike a dropped link.
class DeviceRefusal : public core::Error {
 public:
  DeviceRefusal(const std::string& what, std::uint16_t sw)
      : core::Error(errc::DeviceRefused, what + " answered " + core::sw_text(sw)), m_sw(sw) {}
  std::uint16_t sw() const { return m_sw; }

 private:
  std::uint16_t m_sw;
};

// One journal row as read back for a resume.
struct JournalRow {
  std::int64_t id = 0;
  std::string imei;
  std::string state;
  core::Bytes identity_wrapped, transport_wrapped, identity_public, transport_public;
  core::Bytes identity_cert, transport_cert, package_digest;
  std::string key_source;  // empty for rows journaled before migration 0007
  std::string identity_statement_sha256, transport_statement_sha256;  // --key-source device
  int master_version = 1;  // of the comm key issued (journal.device.master_version, migration 0010)
  std::string station_id;  // the station that claimed it: its token wrapped the keys
};

// One audit row. A "sign.begin" row is durable before the CA key signs; its "sign.done" rides in the
// statement that records the certificates, so the trail accounts for every use of the CA key.
struct AuditRow {
  const char* event;
  const char* kind;
  std::string detail;
};

std::string sha256_hex(const core::Bytes& b);
std::string subject_detail(const core::Bytes& subject_key);
void audit(core::pq::Connection& db, const std::string& station, const std::string& chip, const std::string& imei,
           const std::vector<AuditRow>& rows);
void void_claim(core::pq::Connection& db, std::int64_t id, const std::string& reason);

class Flow {
 public:
  Flow(Personalizer& owner, core::DeviceChannel& channel, JournalDb& db, DeviceResult& result);

  // Runs the steps the journal and the device call for; throws the first failure. result() holds
  // what is known so far either way.
  void run();
  Step current() const noexcept { return m_cur; }
  // A definite refusal now means this claim can never complete: the caller voids it.
  bool may_void() const noexcept {
    return m_cur == Step::Attest || m_cur == Step::Issue || m_cur == Step::Store || m_cur == Step::Backup;
  }
  const std::optional<std::int64_t>& claim_id() const noexcept { return m_claim_id; }

 private:
  void connect();
  void read_device();
  void claim();
  void attest();
  void issue();
  void store();
  void check_backup();
  void record();
  void publish();
  void run_step(Step s);

  // read_device's parts.
  core::ResponseApdu read_cplc(std::size_t max_answer);
  void refuse(Refusal why, const std::optional<std::string>& device_imei);
  // read_device's last part (flow_channel.cpp): the chip's vendor identity checked and the SCP11a
  // session opened, or the plain channel said for this device.
  void open_channel();
  core::chip::VerifiedChip verify_vendor_identity();
  // attest's part: one GENERATE KEY and its statement checked; returns the statement.
  core::chip::Statement attest_key(core::chip::KeyKind kind, const core::Bytes& context, std::uint32_t last_counter,
                                   std::string& statement_sha256);
  // claim's parts.
  void new_claim();
  void resume_claim();
  // Why a blank device's live row cannot be resumed (its IMEI is voided, a new one claimed); empty: it can.
  std::string unresumable_reason() const;
  void write_claim(const ClaimExec& exec, const std::string& imei, const DeviceKeys& keys);
  // issue's part: the two certificates, with their audit rows on failure.
  void sign_certificates();

  // Extended length (ISO 7816-4 section 5.1) for this device: wanted unless the station is set to short
  // APDUs or the channel says no; dropped for the rest of the session when the device or reader refuses.
  void fall_back_to_short(const std::string& why);
  core::ResponseApdu send(const core::CommandApdu& c, std::size_t max_answer);
  // The link every command after open_channel goes over: the SCP11a session, or the plain channel.
  core::DeviceChannel& link() noexcept { return m_secure ? static_cast<core::DeviceChannel&>(*m_secure) : m_channel; }
  core::ResponseApdu expect_ok(const core::CommandApdu& c, const char* what, std::size_t max_answer);
  // A command that changes nothing on the device, built by `make(extended)`: refused for its
  // extended length (core ErrorCode::ExtendedLengthRefused), it is sent again in short form.
  core::ResponseApdu send_read_only(const std::function<core::CommandApdu(bool)>& make, std::size_t max_answer);

  Personalizer& m_p;
  core::DeviceChannel& m_channel;
  JournalDb& m_db;
  DeviceResult& m_res;
  std::unique_ptr<KeySource> m_source;
  Step m_cur = Step::Connect;
  bool m_extended = false;
  std::unique_ptr<core::scp11::SecureChannel> m_secure;  // scp11a, once open_channel ran
  std::optional<core::chip::VerifiedChip> m_verified;    // the chip's vendor identity (scp11a)

  // What the steps hand on.
  std::optional<core::ChipId> m_chip;
  std::optional<core::Imei> m_imei;  // the claim's, checked when it is taken
  bool m_personalized = false;  // the device said so at read-device
  std::optional<JournalRow> m_row;
  std::optional<std::int64_t> m_claim_id;
  DeviceKeys m_keys;
  bool m_begin_logged = false;  // both sign.begin rows committed with the claim
  core::Bytes m_identity_der, m_transport_der;
  core::SecureBytes m_package;  // the encoded data package, from issue to store
  std::string m_kcv_hex;        // the communication key's check value, for the secret DB
  int m_master_version = 1;     // the master version of the comm key (package header, secret DB)
  std::string m_statement_sha256[2];  // identity, transport: SHA-256 of the attestation statements
  core::Bytes m_backup;
  std::string m_record_json;    // set when this call writes the outbox row
};

}  // namespace keyline::station
