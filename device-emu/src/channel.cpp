// The chip's side of the personalization channel (docs/channel.md): its vendor identity (GET DATA
// BF21 / DF21), SCP11a (PERFORM SECURITY OPERATION, MUTUAL AUTHENTICATE, GlobalPlatform Card
// Specification v2.3 Amendment F), secure messaging on every later command (Amendment D), and
// GENERATE KEY with its attestation statement (docs/protocol.md section 9).
#include <botan/curve25519.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>
#include <botan/system_rng.h>
#include <botan/x509cert.h>

#include <algorithm>

#include "keyline/core/cert_profile.h"
#include "keyline/core/chip_identity.h"
#include "keyline/core/scp03_session.h"
#include "keyline/core/scp11.h"
#include "keyline/device/applet.h"
#include "keyline/device/log.h"

namespace keyline::device {

namespace {

// Amendment F section 7.4.2: GET DATA BF21 names the SD key: A6 04 { 83 02 KID KVN }.
constexpr std::uint8_t kStoreKeyRef[] = {
    0xA6, 0x04, 0x83, 0x02, core::scp11::kSdKidScp11a, core::scp11::kKeyVersion};
// An OCE chain longer than this is refused: keyline's is Station CA certificate + OCE certificate.
constexpr std::size_t kMaxOceChain = 4;

core::ResponseApdu sw_only(std::uint16_t sw) {
  core::ResponseApdu r;
  r.sw = sw;
  return r;
}

core::ResponseApdu with_data(const core::Bytes& data) {
  core::ResponseApdu r;
  r.data.assign(data.begin(), data.end());
  return r;
}

// The OCE leaf's profile (docs/channel.md): a P-256 key-agreement key under keyline's OCE policy.
// Returns its 65-byte point, empty when the certificate is not an OCE certificate.
core::Bytes oce_point(const Botan::X509_Certificate& leaf) {
  if (leaf.is_CA_cert() || leaf.constraints() != Botan::KEY_AGREEMENT) return {};
  const auto policies = leaf.certificate_policy_oids();
  if (std::find(policies.begin(), policies.end(), Botan::OID(core::chip::kOcePolicyOid)) == policies.end())
    return {};
  const auto key = leaf.load_subject_public_key();
  const auto* ec = dynamic_cast<const Botan::EC_PublicKey*>(key.get());
  if (!ec || ec->domain() != Botan::EC_Group("secp256r1")) return {};
  return ec->public_point().encode(Botan::PointGFp::UNCOMPRESSED);
}

}  // namespace

void Session::end_channel() noexcept {
  m_channel.reset();
  m_scp03.reset();
  m_service = false;
  m_oce_chain.clear();
  m_oce_point.reset();
  core::SecureBytes().swap(m_generated_identity);
  core::SecureBytes().swap(m_generated_transport);
}

// What a vendor chip refuses outside the channel (docs/channel.md "Commands outside the channel"):
// everything that carries or reveals personalization data. Recovery's commands stay plain on a
// PERSONALIZED chip: the backup it writes is sealed under the chip key and checked by every boot
// check before BOOT STAGED writes the flash, and recovery holds no station certificate.
bool Session::needs_channel(const core::CommandApdu& c) const {
  switch (c.ins) {
    case ins::store_data:
    case channel_ins::generate_key:
      return true;
    case ins::get_data:
      return ((c.p1 << 8) | c.p2) == core::applet::tag::backup;
    case ins::restore_drill:
      return m_device.m_chip.lifecycle() == Lifecycle::Blank;
    default:
      return false;
  }
}

core::ResponseApdu Session::process_secured(const core::CommandApdu& c) {
  const std::string& chip = m_device.m_chip.chip_id().str();
  // SCP03's EXTERNAL AUTHENTICATE carries a C-MAC before any channel is open (service.cpp).
  if (!m_channel && m_scp03 && c.ins == core::scp::kInsExternalAuthenticate) return external_authenticate(c);
  if (!m_channel) return sw_only(core::sw::security_not_satisfied);
  core::CommandApdu plain;
  try {
    plain = m_channel->unwrap_command(c);
  } catch (const core::Error& e) {
    // A bad MAC, a replay (the MAC chain moved on) or bad padding: the session is over.
    log_line(chip, std::string("secure channel closed: ") + e.what());
    end_channel();
    drop_chain();
    drop_store();
    return sw_only(core::sw::security_not_satisfied);
  }
  plain.cla = static_cast<std::uint8_t>(plain.cla & ~0x04);
  m_secured = true;
  core::ResponseApdu r = m_service ? service_dispatch(plain) : dispatch(plain);
  m_secured = false;
  // A SELECT under the channel ended it: its answer goes plain.
  if (!m_channel) return r;
  core::ResponseApdu wrapped = m_channel->wrap_response(r);
  // The wrapped answer in 61XX pieces by plain GET RESPONSE (ISO 7816-4 section 5.6): the host's
  // link gathers it whole before it checks the R-MAC.
  const std::size_t ne = c.le.value_or(0);
  if (wrapped.data.size() <= ne) return wrapped;
  if (ne == 0) {
    const std::size_t n = std::min<std::size_t>(wrapped.data.size(), 256);
    m_announced = std::move(wrapped);
    return sw_only(static_cast<std::uint16_t>(core::sw::bytes_remaining_base | (n & 0xFF)));
  }
  return m_chainer.start(std::move(wrapped), std::min<std::size_t>(ne, 256));
}

core::ResponseApdu Session::get_chip_data(std::uint16_t tag, const core::CommandApdu& c) {
  const auto& vendor = m_device.m_chip.vendor();
  if (!vendor) return sw_only(core::sw::referenced_data_not_found);
  if (tag == core::chip::kAttestationCertTag) return with_data(vendor->attestation_cert);
  // keyline's chips hold one SD key, KID 11 KVN 01 (core/scp11.h); any other reference is not there.
  if (c.data.size() != sizeof kStoreKeyRef || !std::equal(c.data.begin(), c.data.end(), kStoreKeyRef))
    return sw_only(core::sw::referenced_data_not_found);
  return with_data(core::scp11::encode_certificate_store({vendor->sd_cert}));
}

// Amendment F section 7.5: each OCE certificate in chained parts (gathered by dispatch), P2 bit 8
// set while another certificate follows. The chain must verify from the ROM root down.
core::ResponseApdu Session::perform_security_operation(const core::CommandApdu& c) {
  const std::string& chip = m_device.m_chip.chip_id().str();
  if (!m_device.m_chip.vendor()) return sw_only(core::sw::ins_not_supported);
  if (!m_selected || m_secured) return sw_only(core::sw::conditions_not_satisfied);
  // P1 = OCE KVN, bit 8 set on the non-final parts of one certificate (the known answers of
  // tests/vectors/globalplatform); the gathered command carries the last part's header.
  if ((c.p1 & 0x7F) != core::scp11::kKeyVersion || (c.p2 & 0x7F) != core::scp11::kOceKid)
    return sw_only(core::sw::incorrect_p1p2);
  if (m_oce_point) {  // a new chain starts a new handshake
    m_oce_point.reset();
    m_oce_chain.clear();
  }
  if (c.data.empty() || m_oce_chain.size() >= kMaxOceChain) {
    m_oce_chain.clear();
    return sw_only(core::sw::wrong_data);
  }
  m_oce_chain.emplace_back(c.data.begin(), c.data.end());
  if (c.p2 & 0x80) return sw_only(core::sw::ok);

  std::vector<core::Bytes> ders;
  ders.swap(m_oce_chain);
  try {
    std::vector<Botan::X509_Certificate> chain;
    for (const auto& d : ders) chain.emplace_back(d);
    const Botan::X509_Certificate leaf = chain.back();
    chain.pop_back();
    core::verify_chain(leaf, chain, m_device.m_chip.roots());
    core::Bytes point = oce_point(leaf);
    if (point.empty())
      throw core::Error(core::ErrorCode::ChainInvalid,
                        "the OCE certificate is not an OCE key-agreement certificate");
    m_oce_point = std::move(point);
  } catch (const std::exception& e) {
    log_line(chip, std::string("OCE certificate chain refused: ") + e.what());
    return sw_only(core::sw::security_not_satisfied);
  }
  return sw_only(core::sw::ok);
}

// Amendment F section 7.6: needs the OCE key verified by PERFORM SECURITY OPERATION just before; one
// handshake per verified chain. A new handshake replaces any channel open on this connection.
core::ResponseApdu Session::mutual_authenticate(const core::CommandApdu& c) {
  const auto& vendor = m_device.m_chip.vendor();
  if (!vendor) return sw_only(core::sw::ins_not_supported);
  if (!m_selected || m_secured || !m_oce_point) return sw_only(core::sw::conditions_not_satisfied);
  core::scp11::MutualAuthRequest request;
  try {
    request = core::scp11::parse_mutual_authenticate(c);
  } catch (const core::FormatError&) {
    return sw_only(core::sw::wrong_data);
  }
  if (request.sd.kid != core::scp11::kSdKidScp11a || request.sd.kvn != core::scp11::kKeyVersion)
    return sw_only(core::sw::referenced_data_not_found);
  const core::Bytes oce = *m_oce_point;
  end_channel();
  auto handshake =
      core::scp11::card_handshake(request, core::Bytes(c.data.begin(), c.data.end()), vendor->sd_scalar, oce);
  m_channel.emplace(std::move(handshake.session));
  log_line(m_device.m_chip.chip_id().str(), "secure channel open (SCP11a)");
  return with_data(handshake.answer_data);
}

// docs/protocol.md section 9: 80 47 P1 00 40 challenge || context 00, under the channel, while BLANK.
core::ResponseApdu Session::generate_key(const core::CommandApdu& c) {
  Chip& chip = m_device.m_chip;
  const auto& vendor = chip.vendor();
  if (!vendor || !m_secured) return sw_only(core::sw::security_not_satisfied);
  if (chip.lifecycle() != Lifecycle::Blank) return sw_only(core::sw::conditions_not_satisfied);
  const auto kind = static_cast<core::chip::KeyKind>(c.p1);
  if ((kind != core::chip::KeyKind::Identity && kind != core::chip::KeyKind::Transport) || c.p2 != 0)
    return sw_only(core::sw::incorrect_p1p2);
  if (c.data.size() != 2 * core::chip::kChallengeSize) return sw_only(core::sw::wrong_length);

  auto& rng = Botan::system_rng();
  core::chip::Statement st;
  st.chip = chip.chip_id();
  st.kind = kind;
  core::SecureBytes private_half;
  if (kind == core::chip::KeyKind::Identity) {
    const Botan::ECDSA_PrivateKey key(rng, Botan::EC_Group("secp256r1"));
    st.usage = 0x01;
    st.public_key = key.public_point().encode(Botan::PointGFp::UNCOMPRESSED);
    private_half = Botan::PKCS8::BER_encode(key);
  } else {
    const Botan::Curve25519_PrivateKey key(rng);
    st.usage = 0x02;
    st.public_key = key.public_value();
    private_half = key.get_x();
  }
  st.challenge.assign(c.data.begin(), c.data.begin() + core::chip::kChallengeSize);
  st.context.assign(c.data.begin() + core::chip::kChallengeSize, c.data.end());
  // Durable before the answer: a restart never hands out this counter again.
  st.counter = chip.next_attestation_counter();
  const auto signed_statement = core::chip::sign_statement(st, *vendor->attestation_key, rng);
  (kind == core::chip::KeyKind::Identity ? m_generated_identity : m_generated_transport).swap(private_half);
  return with_data(core::chip::encode_signed_statement(signed_statement));
}

void Session::insert_generated_keys(core::DataPackage& pkg) const {
  if (!pkg.identity_key.empty() || !pkg.transport_key.empty())
    throw core::Error(core::ErrorCode::BadDataPackage,
                      "a version 2 package came with private keys from the station");
  if (m_generated_identity.empty() || m_generated_transport.empty())
    throw core::Error(core::ErrorCode::BadDataPackage,
                      "version 2 package, but no keys were generated in this session");
  pkg.identity_key = m_generated_identity;
  pkg.transport_key = m_generated_transport;
}

}  // namespace keyline::device
