// --key-source device against a chip that lies in its attestation statements (issue #15): a test card
// with a genuine vendor identity (certificates from a vendor CA the station lists), a real SCP11a
// handshake and real secure messaging (core/scp11.h, the card side), whose GENERATE KEY answers are
// wrong in one way each. The station must refuse at the attest step, void the IMEI and certify nothing.
// Real PostgreSQL and the real SoftHSM token (the OCE key's ECDH runs there).
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <botan/curve25519.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/system_rng.h>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/chip_identity.h"
#include "keyline/core/cplc.h"
#include "keyline/core/device_channel.h"
#include "keyline/core/scp11.h"
#include "keyline/station/personalize.h"
#include "station_fixture.h"

using namespace keyline;
using namespace keyline::station;
using namespace keyline::station::test_fixture;
namespace chip = core::chip;

namespace {

enum class Lie { None, WrongChallenge, OtherChip, OtherKind, OtherSigner };

struct Vendor {
  Botan::ECDSA_PrivateKey key{Botan::system_rng(), Botan::EC_Group("secp256r1")};
  Botan::X509_Certificate ca = chip::make_vendor_ca(key, "Test Fab", Botan::system_rng());
};

// The chip's side in-process: SELECT, STATUS, CPLC, GET DATA BF21/DF21, PSO, MUTUAL AUTHENTICATE, then
// secured commands; GENERATE KEY answers with the configured lie, everything else secured with 6A80.
class LyingCard final : public core::DeviceChannel {
 public:
  LyingCard(const Vendor& vendor, std::uint32_t serial, Lie lie) : m_lie(lie) {
    auto& rng = Botan::system_rng();
    m_cplc = core::Cplc::make(0x4B4C, 0x0001, serial, 0x0001);
    m_chip = m_cplc.chip_id();
    m_sd_cert = chip::issue_chip_certificate(vendor.ca, vendor.key, m_sd, chip::ChipKeyRole::Sd, m_chip,
                                             core::kDefaultHwType, rng);
    m_att_cert = chip::issue_chip_certificate(vendor.ca, vendor.key, m_att, chip::ChipKeyRole::Attestation, m_chip,
                                              core::kDefaultHwType, rng);
  }
  void connect() override { m_connected = true; }
  void close() noexcept override { m_connected = false; }
  bool connected() const noexcept override { return m_connected; }
  bool extended_length() const noexcept override { return false; }
  void disable_extended_length() noexcept override {}
  const std::string& address() const noexcept override { return m_address; }
  const core::Bytes& atr() const noexcept override { return m_atr; }
  const core::ChipId& chip_id() const { return m_chip; }
  int statements = 0;

  core::ResponseApdu transmit(const core::CommandApdu& c, std::size_t) override {
    if (c.cla & 0x04) return secured(c);
    switch (c.ins) {
      case 0xA4: return ok(core::Bytes{});
      case 0xC4: return ok(core::applet::encode_status({core::applet::Lifecycle::Blank, m_chip,
                                                        core::applet::FlashState::Empty, std::nullopt}));
      case 0xCA:
        if (c.p1 == 0x9F) return ok(m_cplc.encode_tagged());
        if (c.p1 == 0xBF) return ok(core::scp11::encode_certificate_store({m_sd_cert}));
        return ok(m_att_cert);
      case 0x2A:
        m_pso.insert(m_pso.end(), c.data.begin(), c.data.end());
        return ok(core::Bytes{});
      case 0x82: {
        const auto req = core::scp11::parse_mutual_authenticate(c);
        auto hs = core::scp11::card_handshake(req, core::Bytes(c.data.begin(), c.data.end()), scalar(m_sd), oce_point());
        m_session.emplace(std::move(hs.session));
        return ok(hs.answer_data);
      }
      default: return {{}, core::sw::ins_not_supported};
    }
  }

 private:
  static core::ResponseApdu ok(const core::SecureBytes& d) { return {d, core::sw::ok}; }
  static core::ResponseApdu ok(const core::Bytes& d) { return {core::SecureBytes(d.begin(), d.end()), core::sw::ok}; }
  static core::SecureBytes scalar(const Botan::ECDSA_PrivateKey& k) {
    core::SecureBytes s(32);
    k.private_value().binary_encode(s.data(), s.size());
    return s;
  }
  // The last certificate of the PSO chain is the OCE certificate (DER SEQUENCEs, 82 LL LL lengths).
  core::Bytes oce_point() const {
    std::size_t at = 0, last = 0, len = 0;
    while (at + 4 <= m_pso.size()) {
      last = at;
      len = 4 + ((static_cast<std::size_t>(m_pso[at + 2]) << 8) | m_pso[at + 3]);
      at += len;
    }
    const Botan::X509_Certificate oce(std::vector<std::uint8_t>(m_pso.begin() + last, m_pso.begin() + last + len));
    const auto key = oce.load_subject_public_key();
    return dynamic_cast<const Botan::EC_PublicKey&>(*key).public_point().encode(Botan::PointGFp::UNCOMPRESSED);
  }

  core::ResponseApdu secured(const core::CommandApdu& c) {
    REQUIRE(m_session);
    const core::CommandApdu plain = m_session->unwrap_command(c);
    if (plain.ins != chip::kInsGenerateKey) return m_session->wrap_response({{}, core::sw::wrong_data});
    return m_session->wrap_response(ok(core::Bytes(generate(plain))));
  }

  core::Bytes generate(const core::CommandApdu& c) {
    auto& rng = Botan::system_rng();
    chip::Statement s;
    s.chip = m_chip;
    s.kind = static_cast<chip::KeyKind>(c.p1);
    s.challenge.assign(c.data.begin(), c.data.begin() + 32);
    s.context.assign(c.data.begin() + 32, c.data.begin() + 64);
    s.counter = static_cast<std::uint32_t>(++statements);
    if (m_lie == Lie::WrongChallenge) s.challenge[0] ^= 0x01;
    if (m_lie == Lie::OtherChip) s.chip = core::Cplc::make(0x4B4C, 0x0001, 0x0BADC0DE, 0x0001).chip_id();
    if (m_lie == Lie::OtherKind && s.kind == chip::KeyKind::Identity) s.kind = chip::KeyKind::Transport;
    s.usage = s.kind == chip::KeyKind::Identity ? 0x01 : 0x02;
    if (s.kind == chip::KeyKind::Identity) {
      const Botan::ECDSA_PrivateKey k(rng, Botan::EC_Group("secp256r1"));
      s.public_key = k.public_point().encode(Botan::PointGFp::UNCOMPRESSED);
    } else {
      s.public_key = Botan::Curve25519_PrivateKey(rng).public_value();
    }
    const Botan::ECDSA_PrivateKey other(rng, Botan::EC_Group("secp256r1"));
    return chip::encode_signed_statement(chip::sign_statement(s, m_lie == Lie::OtherSigner ? other : m_att, rng));
  }

  Lie m_lie;
  core::Cplc m_cplc;
  core::ChipId m_chip;
  Botan::ECDSA_PrivateKey m_sd{Botan::system_rng(), Botan::EC_Group("secp256r1")};
  Botan::ECDSA_PrivateKey m_att{Botan::system_rng(), Botan::EC_Group("secp256r1")};
  core::Bytes m_sd_cert, m_att_cert, m_pso;
  std::optional<core::scp::SecureMessaging> m_session;
  bool m_connected = false;
  std::string m_address = "test:lying-card";
  core::Bytes m_atr{0x3B, 0x00};
};

}  // namespace

TEST_CASE("--key-source device: a chip whose statements lie is refused at attest, its IMEI voided") {
  StationConfig cfg = station_config();
  const Vendor vendor;
  const std::string vendors = test::testenv_dir() + "/attest-vendors-" + std::to_string(::getpid()) + ".pem";
  std::ofstream(vendors, std::ios::trunc) << core::to_pem(vendor.ca);
  cfg.channel = "scp11a";
  cfg.chip_vendors = vendors;
  cfg.key_source = "device";
  auto db = fresh_station_db("st_attest");
  auto keys = StationKeys::open(cfg, 2);
  REQUIRE(keys.oce_chain.size() == 2);
  pool_generate_imeis(db, "35780502", 8);
  Personalizer p(cfg, keys, nullptr);
  JournalDb jdb(db);
  std::uint32_t serial = 0x00A77E50;

  SUBCASE("control: honest statements pass the attest step (the card refuses STORE DATA afterwards)") {
    LyingCard card(vendor, ++serial, Lie::None);
    const auto r = p.personalize(card, jdb);
    INFO(r.error);
    CHECK(r.reached == Step::Store);
    CHECK(card.statements == 2);
    CHECK(count(db, "SELECT count(*) FROM journal.chip_attestation WHERE chip_id = $1 AND last_counter = 2",
                {card.chip_id().str()}) == 1);
    CHECK(count(db, "SELECT count(*) FROM journal.device WHERE chip_id = $1 AND length(identity_public) > 0"
                    " AND identity_statement_sha256 IS NOT NULL", {card.chip_id().str()}) == 1);
  }
  const struct {
    Lie lie;
    core::ErrorCode code;
    const char* what;
  } lies[] = {{Lie::WrongChallenge, core::ErrorCode::AttestationMismatch, "a statement for another challenge"},
              {Lie::OtherChip, core::ErrorCode::AttestationMismatch, "another chip's statement"},
              {Lie::OtherKind, core::ErrorCode::AttestationMismatch, "another key type"},
              {Lie::OtherSigner, core::ErrorCode::BadAttestation, "a statement not signed by the attestation key"}};
  for (const auto& l : lies) {
    SUBCASE(l.what) {
      LyingCard card(vendor, ++serial, l.lie);
      const auto r = p.personalize(card, jdb);
      INFO(r.error);
      CHECK(r.reached == Step::Attest);
      CHECK(r.error_code == static_cast<int>(l.code));
      CHECK(r.error.find("voided") != std::string::npos);
      CHECK(count(db, "SELECT count(*) FROM journal.device WHERE chip_id = $1 AND state = 'void'",
                  {card.chip_id().str()}) == 1);
      CHECK(count(db, "SELECT count(*) FROM journal.device WHERE chip_id = $1 AND identity_cert IS NOT NULL",
                  {card.chip_id().str()}) == 0);
      CHECK(count(db, "SELECT count(*) FROM journal.audit WHERE chip_id = $1", {card.chip_id().str()}) == 0);
      CHECK(count(db, "SELECT count(*) FROM journal.chip_attestation WHERE chip_id = $1", {card.chip_id().str()}) == 0);
    }
  }
  std::remove(vendors.c_str());
}
