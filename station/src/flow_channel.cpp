// The flow's channel to the chip (docs/station.md, "The channel"): the chip's vendor identity
// checked before any claim, the SCP11a session every later command runs under, and the attest step
// of --key-source device (GENERATE KEY and its statements, docs/channel.md).
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/system_rng.h>

#include "flow.h"
#include "keyline/core/error.h"
#include "line_metrics.h"  // token operation latency

namespace keyline::station {

namespace chip = core::chip;

namespace {

// The longest answers keyline's chips give: a certificate store of at most 8 certificates, and one
// attestation certificate (docs/channel.md).
constexpr std::size_t kMaxCertificateStore = 8 * 1024;
constexpr std::size_t kMaxAttestationCert = 2 * 1024;
constexpr std::size_t kMaxGenerateKeyAnswer = 1024;

// GET DATA DF21 (ISO 7816-4 section 11.4.3, the same class as GP's GET DATA BF21): 00 CA DF 21 00.
core::CommandApdu get_attestation_certificate_command() {
  core::CommandApdu c;
  c.cla = 0x00;
  c.ins = 0xCA;
  c.p1 = static_cast<std::uint8_t>(chip::kAttestationCertTag >> 8);
  c.p2 = static_cast<std::uint8_t>(chip::kAttestationCertTag & 0xFF);
  c.le = 256;
  return c;
}

// Attested, and then certified: the identity key as its SubjectPublicKeyInfo (OS2ECP refuses a point
// that is not on P-256, SEC 1 section 2.3.4).
core::Bytes identity_spki(const core::Bytes& point) {
  try {
    const Botan::EC_Group group("secp256r1");
    return Botan::ECDSA_PublicKey(group, group.OS2ECP(point)).subject_public_key();
  } catch (const Botan::Exception&) {
    throw core::Error(core::ErrorCode::AttestationMismatch, "the attested identity key is not a P-256 point");
  }
}

// Statements already seen for a chip: their counters only grow (the chip's counter never resets, so
// a statement at or below the highest one seen is a replay).
constexpr const char* kLastCounter = "SELECT last_counter FROM journal.chip_attestation WHERE chip_id = $1";
// Attested: the public halves and statement hashes on the claim's row, and the chip's counter.
constexpr const char* kAttested =
    "WITH u AS (UPDATE journal.device SET identity_public = $2, transport_public = $3,"
    " identity_statement_sha256 = $4, transport_statement_sha256 = $5, updated_at = now() WHERE id = $1)"
    " INSERT INTO journal.chip_attestation (chip_id, last_counter) VALUES ($6, $7)"
    " ON CONFLICT (chip_id) DO UPDATE SET last_counter = greatest(journal.chip_attestation.last_counter,"
    " EXCLUDED.last_counter), updated_at = now()";

}  // namespace

void Flow::open_channel() {
  if (m_p.m_config.channel != "scp11a") {
    // Said for every device (issue #15): nobody checked this chip, and its keys cross the link in clear.
    m_p.m_log(m_channel.address() + ": chip " + m_res.chip_id +
              ": plain channel (no chip vendor identity checked, no secure messaging)");
    return;
  }
  m_verified = verify_vendor_identity();
  m_res.chip_vendor = m_verified->vendor;
  core::Pkcs11Token& token = *m_p.m_keys.token;
  core::scp11::HostParams params;
  params.oce_chain = m_p.m_keys.oce_chain;
  params.static_ecdh = [&token](const core::Bytes& point) {
    return line_detail::timed(line_detail::TokenOp::Ecdh, [&] { return token.ecdh_derive(key_label::oce, point); });
  };
  m_secure = std::make_unique<core::scp11::SecureChannel>(
      m_channel, core::scp11::open_host_session(m_channel, params, m_verified->sd_public_point));
  // Secured commands are short (GP Amendment D section 6.2.4): STORE DATA goes in secured blocks.
  m_extended = false;
}

chip::VerifiedChip Flow::verify_vendor_identity() {
  const auto store = m_channel.transmit(core::scp11::get_certificate_store_command({}), kMaxCertificateStore);
  // ISO 7816-4 section 5.6: 6A88 is "referenced data not found": a chip made without a vendor.
  if (store.sw == core::sw::referenced_data_not_found)
    throw core::Error(core::ErrorCode::ChipNotGenuine,
                      "chip " + m_res.chip_id + " has no chip vendor identity (GET DATA BF21 answered " +
                          core::sw_text(store.sw) + "); nothing claimed. Devices made without a chip vendor take "
                          "--channel plain");
  if (store.sw != core::sw::ok) throw DeviceRefusal("GET DATA BF21 (certificate store)", store.sw);
  const auto att = m_channel.transmit(get_attestation_certificate_command(), kMaxAttestationCert);
  if (att.sw != core::sw::ok) throw DeviceRefusal("GET DATA DF21 (attestation certificate)", att.sw);
  // ChipNotGenuine / ChipIdMismatch: refused here, before the journal is read or anything claimed.
  return chip::verify_chip(core::scp11::parse_certificate_store(store.data),
                           core::Bytes(att.data.begin(), att.data.end()), m_p.m_vendors, *m_chip);
}

// --- attest (--key-source device): the chip makes both keys and signs what it made -------------
void Flow::attest() {
  const std::string& station_id = m_p.m_config.station_id;
  const core::Bytes context = chip::context_hash(*m_chip, m_res.imei, station_id, *m_claim_id);
  const auto seen = m_db.step(kLastCounter, {m_res.chip_id});
  const auto last = static_cast<std::uint32_t>(seen.empty() ? 0 : seen.int64(0, 0));
  const chip::Statement id = attest_key(chip::KeyKind::Identity, context, last, m_statement_sha256[0]);
  const chip::Statement tr = attest_key(chip::KeyKind::Transport, context, id.counter, m_statement_sha256[1]);
  m_keys = DeviceKeys{};
  m_keys.pub = {identity_spki(id.public_key), tr.public_key};
  m_db.step(kAttested, {*m_claim_id, m_keys.pub.identity, m_keys.pub.transport, m_statement_sha256[0],
                        m_statement_sha256[1], m_res.chip_id, static_cast<std::int64_t>(tr.counter)});
  m_row->identity_public = m_keys.pub.identity;
  m_row->transport_public = m_keys.pub.transport;
}

chip::Statement Flow::attest_key(chip::KeyKind kind, const core::Bytes& context, std::uint32_t last_counter,
                                 std::string& statement_sha256) {
  // A fresh challenge from the kernel for each key: a statement made for another request cannot answer this one.
  core::Bytes challenge(chip::kChallengeSize);
  Botan::system_rng().randomize(challenge.data(), challenge.size());
  const auto r = link().transmit(chip::generate_key_command(kind, challenge, context), kMaxGenerateKeyAnswer);
  if (r.sw != core::sw::ok) throw DeviceRefusal("GENERATE KEY", r.sw);
  const chip::SignedStatement signed_statement = chip::parse_signed_statement(r.data.data(), r.data.size());
  // BadAttestation / AttestationMismatch: the claim is voided by the caller (definite refusal).
  const chip::Statement s =
      chip::verify_statement(signed_statement, *m_verified, *m_chip, kind, challenge, context, last_counter);
  statement_sha256 = sha256_hex(signed_statement.statement);
  return s;
}

}  // namespace keyline::station
