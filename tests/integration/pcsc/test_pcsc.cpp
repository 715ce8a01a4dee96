// core::pcsc against a real pcscd (tests/support/pcscd.sh: private, 4 vpcd readers) and emulated
// devices put into its readers with `keyline-device serve --vpcd` (docs/readers.md). run.sh starts
// the pcscd and runs this program twice: everything but "no service", then, with pcscd stopped,
// only that case.
#include <PCSC/winscard.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/atr.h"
#include "keyline/core/cplc.h"
#include "keyline/core/device_channel.h"
#include "keyline/core/error.h"
#include "keyline/core/pcsc.h"
#include "pcsc_cards.h"

using namespace keyline::core;
using namespace std::chrono_literals;

namespace {

using keyline::test::Card;
using keyline::test::Reader;
using keyline::test::wait_for_card;
using Made = keyline::test::MadeDevice;
std::string env(const char* name) { return keyline::test::pcsc_env(name); }
std::vector<Reader> test_readers() { return keyline::test::test_readers(4); }

Made make_device(const std::string& name) {
  return keyline::test::make_device(name, env("KEYLINE_PCSC_WORK") + "/root.pem");
}

// A card put into `reader` once the one before it is seen gone: pcscd polls the vpcd reader
// (400 ms), and a card swapped faster than that is, to pcscd, the same card never reset.
std::unique_ptr<Card> plug(pcsc::Context& ctx, const Made& dev, const Reader& reader, std::vector<std::string> extra = {}) {
  wait_for_card(ctx, reader.name, false);
  auto card = std::make_unique<Card>(dev, reader, std::move(extra));
  wait_for_card(ctx, reader.name, true);
  return card;
}

int code_of(const std::function<void()>& f, std::string* message = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.numeric();
  }
  return 0;
}

constexpr int code(ErrorCode c) { return static_cast<int>(c); }

// One APDU straight through SCardTransmit on a T=0 connection: what the card itself answers,
// with no GET RESPONSE or 6CXX handling in between.
std::uint16_t raw_t0_sw(const std::string& reader, const Bytes& apdu) {
  SCARDCONTEXT ctx = 0;
  REQUIRE(SCardEstablishContext(SCARD_SCOPE_SYSTEM, nullptr, nullptr, &ctx) == SCARD_S_SUCCESS);
  SCARDHANDLE card = 0;
  DWORD proto = 0;
  REQUIRE(SCardConnect(ctx, reader.c_str(), SCARD_SHARE_EXCLUSIVE, SCARD_PROTOCOL_T0, &card, &proto) == SCARD_S_SUCCESS);
  BYTE out[258];
  DWORD len = sizeof out;
  const LONG rv = SCardTransmit(card, SCARD_PCI_T0, apdu.data(), static_cast<DWORD>(apdu.size()), nullptr, out, &len);
  SCardDisconnect(card, SCARD_RESET_CARD);
  SCardReleaseContext(ctx);
  REQUIRE(rv == SCARD_S_SUCCESS);
  REQUIRE(len >= 2);
  return static_cast<std::uint16_t>(out[len - 2] << 8 | out[len - 1]);
}

Bytes with_aid(std::initializer_list<std::uint8_t> head, std::optional<std::uint8_t> le) {
  Bytes b(head);
  b.push_back(sizeof applet::kAid);
  b.insert(b.end(), std::begin(applet::kAid), std::end(applet::kAid));
  if (le) b.push_back(*le);
  return b;
}

// STATUS sent as a case 4 command (data + Le): the applet ignores the data, so the answer is
// STATUS's, and over T=0 it can only come by 61XX / GET RESPONSE.
CommandApdu status_case4() {
  CommandApdu c = applet::status_command();
  c.data = SecureBytes{0x00};
  return c;
}

}  // namespace

TEST_CASE("readers: listed, matched by glob, substring and all; no match names the readers") {
  const auto readers = test_readers();
  pcsc::Context ctx;
  const std::vector<std::string> names = ctx.readers();
  for (const auto& r : readers) CHECK(std::find(names.begin(), names.end(), r.name) != names.end());
  CHECK(ctx.require_readers({"keyline vpcd 0 *"}).size() == 2);
  CHECK(ctx.require_readers({"all"}).size() == names.size());
  CHECK(ctx.require_readers({readers[3].name}) == std::vector<std::string>{readers[3].name});
  CHECK(ctx.require_readers({"vpcd 1 ", "vpcd 0 00 00"}).size() == 3);
  std::string message;
  CHECK(code_of([&] { ctx.require_readers({"no such reader*"}); }, &message) == code(ErrorCode::PcscNoReader));
  CHECK(message.find("'no such reader*'") != std::string::npos);
  CHECK(message.find(readers[0].name) != std::string::npos);
  CHECK(message.find(readers[3].name) != std::string::npos);
}

TEST_CASE("wait(): a card put in and pulled out, the event counter moves, a quiet wait times out") {
  const auto readers = test_readers();
  const Made dev = make_device("dev-wait");
  pcsc::Context ctx;
  const std::vector<std::string> one{readers[3].name};
  const auto empty = ctx.states(one);
  REQUIRE_FALSE(empty[0].present);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(ctx.wait(one, empty, 300ms)[0].raw == empty[0].raw);  // nothing happens: the states come back
  CHECK(std::chrono::steady_clock::now() - t0 >= 250ms);
  Card card(dev, readers[3]);
  const auto in = wait_for_card(ctx, readers[3].name, true);
  CHECK(in.event_count != empty[0].event_count);
  CHECK(in.atr == Bytes{0x3B, 0x80, 0x80, 0x01, 0x01});
  card.pull();
  const auto out = wait_for_card(ctx, readers[3].name, false);
  CHECK(out.event_count != in.event_count);
  // cancel() from another thread ends a long wait at once.
  std::thread canceller([&] {
    std::this_thread::sleep_for(200ms);
    ctx.cancel();
  });
  const auto t1 = std::chrono::steady_clock::now();
  ctx.wait(one, {out}, 20s);
  canceller.join();
  CHECK(std::chrono::steady_clock::now() - t1 < 5s);
}

TEST_CASE("PcscChannel over T=1: SELECT and GET DATA CPLC give the device's chip ID") {
  const auto readers = test_readers();
  const Made dev = make_device("dev-t1");
  pcsc::Context ctx;
  auto card = plug(ctx, dev, readers[0]);
  auto channel = open_device_channel(kPcscScheme + readers[0].name);
  CHECK(channel->address() == "pcsc:" + readers[0].name);
  channel->connect();
  auto& pc = dynamic_cast<pcsc::PcscChannel&>(*channel);
  CHECK_FALSE(pc.t0());                 // T=1 chosen although the ATR names T=0 first
  CHECK(channel->extended_length());    // the ATR states no capabilities: assumed
  CHECK(channel->transmit(applet::select_command()).sw == sw::ok);
  const ResponseApdu r = channel->transmit(applet::get_cplc_command());
  REQUIRE(r.sw == sw::ok);
  CHECK(Cplc::parse(r.data.data(), r.data.size()).chip_id().str() == dev.chip_id);
  // A case 4 command over T=1 goes whole, Le included.
  const ResponseApdu st = channel->transmit(status_case4(), applet::kStatusSizeWithImei);
  CHECK(st.sw == sw::ok);
  CHECK(st.data.size() == applet::kStatusSize);
}

TEST_CASE("T=0 card: a case 4 answer comes by 61XX / GET RESPONSE, a wrong Le by 6CXX") {
  const auto readers = test_readers();
  const Made dev = make_device("dev-t0");
  pcsc::Context ctx;
  auto card = plug(ctx, dev, readers[1], {"--protocol", "t0"});
  // What the card itself says: a case 4 TPDU is not T=0 (6700); without Le it announces 61XX;
  // GET DATA CPLC with Le 00 is answered 6C2D (45 bytes are there).
  CHECK(raw_t0_sw(readers[1].name, with_aid({0x00, 0xA4, 0x04, 0x00}, std::nullopt)) == sw::ok);
  CHECK(raw_t0_sw(readers[1].name, {0x80, 0xC4, 0x00, 0x00, 0x01, 0x00, 0x00}) == sw::wrong_length);
  CHECK(raw_t0_sw(readers[1].name, {0x80, 0xC4, 0x00, 0x00, 0x01, 0x00}) == 0x610C);
  CHECK(raw_t0_sw(readers[1].name, {0x80, 0xCA, 0x9F, 0x7F, 0x00}) == 0x6C2D);

  pcsc::PcscChannel channel(readers[1].name);
  channel.connect();
  CHECK(channel.t0());
  CHECK_FALSE(channel.extended_length());  // T=0: short APDUs only
  CHECK(channel.transmit(applet::select_command()).sw == sw::ok);
  const ResponseApdu st = channel.transmit(status_case4(), applet::kStatusSizeWithImei);
  CHECK(st.sw == sw::ok);
  CHECK(applet::parse_status(st.data).chip_id.str() == dev.chip_id);
  const ResponseApdu r = channel.transmit(applet::get_cplc_command());
  REQUIRE(r.sw == sw::ok);
  CHECK(Cplc::parse(r.data.data(), r.data.size()).chip_id().str() == dev.chip_id);
}

TEST_CASE("--no-extended card: extended_length() false from the ATR; a forced extended APDU is ExtendedLengthRefused") {
  const auto readers = test_readers();
  const Made dev = make_device("dev-short");
  pcsc::Context ctx;
  auto card = plug(ctx, dev, readers[2], {"--no-extended"});
  const auto s = ctx.states({readers[2].name})[0];
  const auto info = parse_atr(s.atr);
  REQUIRE(info);
  CHECK(info->extended_length == std::optional<bool>(false));
  pcsc::PcscChannel channel(readers[2].name);
  channel.connect();
  CHECK_FALSE(channel.t0());
  CHECK_FALSE(channel.extended_length());
  CHECK(channel.transmit(applet::select_command()).sw == sw::ok);
  CommandApdu forced = applet::get_cplc_command();
  forced.extended = true;
  std::string message;
  CHECK(code_of([&] { channel.transmit(forced); }, &message) == code(ErrorCode::ExtendedLengthRefused));
  CHECK(message.find(readers[2].name) != std::string::npos);
  // The session goes on in short APDUs: the same command, short, and a long Le shortened to 256.
  CHECK(channel.connected());
  CHECK(channel.transmit(applet::get_cplc_command()).sw == sw::ok);
  CommandApdu long_le = applet::get_cplc_command();
  long_le.le = 65536;
  CHECK(channel.transmit(long_le).sw == sw::ok);
}

TEST_CASE("an extended APDU to a card that takes it is answered (the refusal above is the card's)") {
  const auto readers = test_readers();
  const Made dev = make_device("dev-ext");
  pcsc::Context ctx;
  auto card = plug(ctx, dev, readers[2]);
  pcsc::PcscChannel channel(readers[2].name);
  channel.connect();
  CHECK(channel.extended_length());
  CHECK(channel.transmit(applet::select_command()).sw == sw::ok);
  CommandApdu forced = applet::get_cplc_command();
  forced.extended = true;
  forced.le = 65536;
  CHECK(channel.transmit(forced).sw == sw::ok);
}

TEST_CASE("a card pulled out mid-exchange is PcscCardRemoved, a dropped link") {
  const auto readers = test_readers();
  const Made dev = make_device("dev-pull");
  pcsc::Context ctx;
  auto card = plug(ctx, dev, readers[3], {"--delay-id-ms", "3000"});
  pcsc::PcscChannel channel(readers[3].name);
  channel.connect();
  REQUIRE(channel.transmit(applet::select_command()).sw == sw::ok);
  std::thread puller([&] {
    std::this_thread::sleep_for(700ms);
    card->pull();
  });
  std::string message;
  const int c = code_of([&] { channel.transmit(applet::get_cplc_command()); }, &message);
  puller.join();
  CHECK(c == code(ErrorCode::PcscCardRemoved));
  CHECK(message == "card pulled out of reader " + readers[3].name);
  CHECK_FALSE(channel.connected());
  wait_for_card(ctx, readers[3].name, false);
  // No card to connect to: SCARD_E_NO_SMARTCARD at connect is PcscCardMute (pcsc.h), after connect_timeout.
  CHECK(code_of([&] { channel.connect(); }, &message) == code(ErrorCode::PcscCardMute));
  CHECK(message == "no card in reader " + readers[3].name + " (waited 5000 ms)");
}

TEST_CASE("io_timeout bounds an exchange the card does not answer; the card is usable again after") {
  const auto readers = test_readers();
  const Made dev = make_device("dev-slow");
  pcsc::Context ctx;
  auto card = plug(ctx, dev, readers[0], {"--delay-id-ms", "4000"});
  ChannelOptions o;
  o.io_timeout = 1000ms;
  pcsc::PcscChannel channel(readers[0].name, o);
  channel.connect();
  REQUIRE(channel.transmit(applet::select_command()).sw == sw::ok);
  const auto t0 = std::chrono::steady_clock::now();
  std::string message;
  CHECK(code_of([&] { channel.transmit(applet::get_cplc_command()); }, &message) == code(ErrorCode::Timeout));
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took >= 900ms);
  CHECK(took < 2500ms);  // not the card's 4 s
  CHECK(message.find("within 1000 ms") != std::string::npos);
  CHECK_FALSE(channel.connected());
  // The exchange left behind ends when the card answers; then the card is free for a new session.
  o.connect_timeout = 10000ms;
  pcsc::PcscChannel again(readers[0].name, o);
  again.connect();
  CHECK(again.transmit(applet::select_command()).sw == sw::ok);
}

TEST_CASE("a mute card (no ATR at power on) is PcscCardMute") {
  const auto readers = test_readers();
  const Made dev = make_device("dev-mute");
  pcsc::Context ctx;
  wait_for_card(ctx, readers[1].name, false);
  Card card(dev, readers[1], {"--mute"});
  const std::vector<std::string> one{readers[1].name};
  auto s = ctx.states(one);
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!(s[0].present && s[0].mute) && std::chrono::steady_clock::now() < deadline) s = ctx.wait(one, s, 500ms);
  CHECK(s[0].mute);
  pcsc::PcscChannel channel(readers[1].name);
  std::string message;
  CHECK(code_of([&] { channel.connect(); }, &message) == code(ErrorCode::PcscCardMute));
  CHECK(message == "card in reader " + readers[1].name + " does not answer (mute)");
}

TEST_CASE("no service: pcscd stopped" * doctest::skip(std::getenv("KEYLINE_PCSC_STOPPED") == nullptr)) {
  std::string message;
  CHECK(code_of([] { pcsc::Context ctx; }, &message) == code(ErrorCode::PcscNoService));
  CHECK(message == "pcscd is not running (no PC/SC service at " + env("PCSCLITE_CSOCK_NAME") + "): start pcscd");
  pcsc::PcscChannel channel("keyline vpcd 0 00 00");
  CHECK(code_of([&] { channel.connect(); }) == code(ErrorCode::PcscNoService));
  CHECK(exit_code_for(ErrorCode::PcscNoService) == exit_code::unavailable);
}
