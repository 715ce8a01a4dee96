// The emulator as a card in a reader (CardOptions: --protocol t0, --no-extended; docs/readers.md):
// its ATR and the T=0 rules, driven through Session::process as the server calls it.
#include <doctest/doctest.h>

#include "device_test_util.h"
#include "keyline/core/apdu.h"
#include "keyline/core/applet_protocol.h"
#include "keyline/core/atr.h"
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

TEST_CASE("card_atr: the default is kAtr; t0 offers T=0 only; --no-extended says so in the card capabilities") {
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

TEST_CASE("T=0: a case 2 command with the wrong Le is answered 6CXX; core::transceive re-sends it") {
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
