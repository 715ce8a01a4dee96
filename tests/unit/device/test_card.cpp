// The emulator as a card in a reader (CardOptions: --protocol t0, --no-extended; docs/readers.md):
// its ATR and the T=0 rules, driven through Session::process as the server calls it.
#include <doctest/doctest.h>

#include "device_test_util.h"
#include "keyline/core/apdu.h"
#include "keyline/core/applet_protocol.h"
#include "keyline/core/atr.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/data_package.h"
#include "keyline/device/applet.h"

using namespace keyline;

namespace {

struct CardRig {
  test::ScratchDir tmp{"card"};
  test::DevicePki pki;
  std::filesystem::path dir = test::make_test_device(pki, tmp.path());
  std::unique_ptr<device::Device> dev;
  std::unique_ptr<device::Session> session;
  explicit CardRig(device::CardOptions card) {
    device::DeviceOptions o;
    o.card = card;
    dev = std::make_unique<device::Device>(device::Chip::load(dir), o);
    session = std::make_unique<device::Session>(*dev);
  }
  core::ResponseApdu raw(const core::Bytes& apdu) {
    return core::decode_response(session->process(apdu.data(), apdu.size()));
  }
};

device::CardOptions t0_card() {
  device::CardOptions c;
  c.protocol = device::Protocol::t0;
  return c;
}

}  // namespace

TEST_CASE("card_atr: the default is kAtr, t0 offers T=0 only, --no-extended says so in the card capabilities") {
  const core::Bytes def = device::card_atr({});
  CHECK(def == core::Bytes(std::begin(device::kAtr), std::end(device::kAtr)));
  const auto d = core::parse_atr(def);
  REQUIRE(d);
  CHECK((d->t0 && d->t1 && d->checksum_ok));
  CHECK_FALSE(d->extended_length.has_value());

  const auto t0 = core::parse_atr(device::card_atr(t0_card()));
  REQUIRE(t0);
  CHECK((t0->t0 && !t0->t1));

  device::CardOptions short_t1;
  short_t1.extended = false;
  const auto s = core::parse_atr(device::card_atr(short_t1));
  REQUIRE(s);
  CHECK((s->t1 && s->checksum_ok));
  CHECK(s->extended_length == std::optional<bool>(false));
  CHECK(s->command_chaining == std::optional<bool>(true));

  device::CardOptions short_t0 = t0_card();
  short_t0.extended = false;
  const auto s0 = core::parse_atr(device::card_atr(short_t0));
  REQUIRE(s0);
  CHECK((s0->t0 && !s0->t1 && s0->extended_length == std::optional<bool>(false)));
}

TEST_CASE("T=0: case 4 with Le is refused, without Le it is announced by 61XX and served by GET RESPONSE") {
  CardRig rig(t0_card());
  CHECK(rig.raw({0x80, 0xC4, 0x00, 0x00, 0x01, 0x00, 0x00}).sw == core::sw::wrong_length);
  CHECK(rig.raw({0x80, 0xC4, 0x00, 0x00, 0x01, 0x00}).sw == 0x610C);
  const auto r = rig.raw({0x00, 0xC0, 0x00, 0x00, 0x0C});
  CHECK(r.sw == core::sw::ok);
  REQUIRE(r.data.size() == core::applet::kStatusSize);
  CHECK(core::applet::parse_status(r.data).chip_id == rig.dev->chip().chip_id());
  // Fetched once: a second GET RESPONSE finds nothing pending.
  CHECK(rig.raw({0x00, 0xC0, 0x00, 0x00, 0x0C}).sw == core::sw::conditions_not_satisfied);
  // A GET RESPONSE asking less leaves the rest announced (61XX) for the next one.
  CHECK(rig.raw({0x80, 0xC4, 0x00, 0x00, 0x01, 0x00}).sw == 0x610C);
  const auto part = rig.raw({0x00, 0xC0, 0x00, 0x00, 0x05});
  CHECK(part.sw == 0x6107);
  CHECK(part.data.size() == 5);
  CHECK(rig.raw({0x00, 0xC0, 0x00, 0x00, 0x07}).sw == core::sw::ok);
}

TEST_CASE("T=0: a case 2 command with the wrong Le is answered 6CXX, core::transceive re-sends it") {
  CardRig rig(t0_card());
  CHECK(rig.raw({0x80, 0xCA, 0x9F, 0x7F, 0x00}).sw == 0x6C2D);
  const auto exact = rig.raw({0x80, 0xCA, 0x9F, 0x7F, 0x2D});
  CHECK(exact.sw == core::sw::ok);
  CHECK(exact.data.size() == 45);
  const auto r = core::transceive([&](const core::SecureBytes& apdu) { return rig.session->process(apdu.data(), apdu.size()); },
                                  core::applet::get_cplc_command());
  CHECK(r.sw == core::sw::ok);
  CHECK(r.data.size() == 45);
  // T=0 takes no extended-length APDU.
  CHECK(rig.raw({0x80, 0xCA, 0x9F, 0x7F, 0x00, 0x00, 0x00}).sw == core::sw::wrong_length);
}

TEST_CASE("--no-extended: an extended-length APDU is answered 6700, its short form is served") {
  device::CardOptions o;
  o.extended = false;
  CardRig rig(o);
  CHECK(rig.raw({0x80, 0xCA, 0x9F, 0x7F, 0x00, 0x00, 0x00}).sw == core::sw::wrong_length);
  CHECK(rig.raw({0x80, 0xCA, 0x9F, 0x7F, 0x00}).sw == core::sw::ok);
  CardRig def({});
  CHECK(def.raw({0x80, 0xCA, 0x9F, 0x7F, 0x00, 0x00, 0x00}).sw == core::sw::ok);
  // A case 4 command with Le over T=1 is taken whole.
  CHECK(def.raw({0x80, 0xC4, 0x00, 0x00, 0x01, 0x00, 0x00}).sw == core::sw::ok);
}

TEST_CASE("T=0: a whole personalization with long answers (backup, drill) through 61XX rounds") {
  CardRig rig(t0_card());
  // What a T=0 reader sends for an APDU: a case 4 command as its case 3 TPDU (ISO 7816-3 section 12.2).
  const auto t0_reader = [&](const core::SecureBytes& apdu) {
    const bool case4 = apdu.size() > 6 && apdu[4] != 0 && apdu.size() == 5u + apdu[4] + 1u;
    return rig.session->process(apdu.data(), apdu.size() - (case4 ? 1 : 0));
  };
  const auto run = [&](const core::CommandApdu& c) { return core::transceive(t0_reader, c); };
  REQUIRE(run(core::applet::select_command()).sw == core::sw::ok);
  const core::SecureBytes pkg = rig.pki.package_for(rig.dev->chip().chip_id(), "490154203237518").encode();
  std::uint8_t block = 0;
  for (std::size_t off = 0; off < pkg.size(); off += 200, ++block) {
    const std::size_t n = std::min<std::size_t>(200, pkg.size() - off);
    const bool last = off + n == pkg.size();
    const auto r = run(core::applet::store_data_command(block, last, core::SecureBytes(pkg.begin() + off, pkg.begin() + off + n)));
    REQUIRE(r.sw == core::sw::ok);
  }
  const auto backup = run(core::applet::get_backup_command(false));
  REQUIRE(backup.sw == core::sw::ok);
  CHECK(backup.data.size() > 256);  // more than one GET RESPONSE round
  core::CommandApdu drill = core::applet::restore_drill_command(core::Bytes(backup.data.begin(), backup.data.end()), false);
  const auto d = run(drill);  // case 4: chained data, the 32-byte answer by 61XX / GET RESPONSE
  REQUIRE(d.sw == core::sw::ok);
  CHECK(core::Bytes(d.data.begin(), d.data.end()) == core::package_digest(pkg));
}
