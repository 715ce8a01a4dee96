// Reader patterns (core::pcsc::match_readers), the ATR parser (core::parse_atr) and device addresses
// (core::open_device_channel), without a pcscd. docs/readers.md.
#include <doctest/doctest.h>

#include "keyline/core/atr.h"
#include "keyline/core/bytes.h"
#include "keyline/core/device_channel.h"
#include "keyline/core/device_link.h"
#include "keyline/core/error.h"
#include "keyline/core/pcsc.h"

using namespace keyline::core;

namespace {

const std::vector<std::string> kNames{"keyline vpcd 0 00 00", "keyline vpcd 0 00 01", "Yubico YubiKey OTP+FIDO+CCID 01 00",
                                      "ACS ACR122U PICC Interface 02 00"};

std::optional<AtrInfo> atr(const std::string& hex_text) {
  const Bytes b = from_hex(hex_text);
  return parse_atr(b);
}

}  // namespace

TEST_CASE("match_readers: a glob when the pattern has wildcards, else a substring, and all, in the order of the names") {
  using pcsc::match_readers;
  CHECK(match_readers(kNames, {"keyline vpcd 0 *"}) == std::vector<std::string>{kNames[0], kNames[1]});
  CHECK(match_readers(kNames, {"*0?"}) == std::vector<std::string>{kNames[0], kNames[1], kNames[2], kNames[3]});
  CHECK(match_readers(kNames, {"keyline vpcd 0 00 0[1]"}) == std::vector<std::string>{kNames[1]});
  // A glob matches the whole name: without the * it is not a substring search.
  CHECK(match_readers(kNames, {"Yubico*CCID"}).empty());
  CHECK(match_readers(kNames, {"YubiKey"}) == std::vector<std::string>{kNames[2]});
  CHECK(match_readers(kNames, {"ACR122U", "vpcd 0 00 00"}) == std::vector<std::string>{kNames[0], kNames[3]});
  CHECK(match_readers(kNames, {"all"}) == kNames);
  CHECK(match_readers(kNames, {"all", "YubiKey"}) == kNames);
  CHECK(match_readers(kNames, {"vpcd", "keyline"}) == std::vector<std::string>{kNames[0], kNames[1]});
  CHECK(match_readers(kNames, {"yubikey"}).empty());  // case matters, as in the names pcscd gives
  CHECK(match_readers(kNames, {""}).empty());
  CHECK(match_readers({}, {"all"}).empty());
}

// ATRs of real cards from pcsc-tools' /usr/share/pcsc/smartcard_list.txt (Ludovic Rousseau's list,
// Debian package pcsc-tools 1.6.2), and the emulator's own (docs/readers.md).
TEST_CASE("parse_atr: protocols and card capabilities of real cards") {
  SUBCASE("keyline-device default: T=0 first, T=1, no historical bytes (capabilities not stated)") {
    const auto a = atr("3B80800101");
    REQUIRE(a);
    CHECK((a->t0 && a->t1 && a->first_protocol == 0 && a->checksum_ok));
    CHECK(a->historical.empty());
    CHECK_FALSE(a->extended_length.has_value());
  }
  SUBCASE("Yubico YubiKey 5 NFC (PKI): T=1, category 80, card capabilities C0 = chaining and extended") {
    const auto a = atr("3BFD1300008131FE158073C021C057597562694B657940");
    REQUIRE(a);
    CHECK((!a->t0 && a->t1 && a->first_protocol == 1 && a->checksum_ok));
    CHECK(a->historical.size() == 13);
    CHECK(a->extended_length == std::optional<bool>(true));
    CHECK(a->command_chaining == std::optional<bool>(true));
  }
  SUBCASE("Yubico YubiKey 4: T=1, proprietary historical bytes ('Yubikey4'): capabilities unknown") {
    const auto a = atr("3BF81300008131FE15597562696B657934D4");
    REQUIRE(a);
    CHECK((a->t1 && a->checksum_ok));
    CHECK(a->historical == Bytes{'Y', 'u', 'b', 'i', 'k', 'e', 'y', '4'});
    CHECK_FALSE(a->extended_length.has_value());
  }
  SUBCASE("NXP JCOP4 (contactless, PC/SC part 3 form): third table 10 = no extended Lc/Le stated") {
    const auto a = atr("3B8580018073C821100E");
    REQUIRE(a);
    CHECK((a->t0 && a->t1 && a->checksum_ok));
    CHECK(a->extended_length == std::optional<bool>(false));
    CHECK(a->command_chaining == std::optional<bool>(false));
  }
  SUBCASE("Dutch biometric passport: third table 40 = extended Lc/Le, no chaining") {
    const auto a = atr("3B858001807384214012");
    REQUIRE(a);
    CHECK(a->extended_length == std::optional<bool>(true));
    CHECK(a->command_chaining == std::optional<bool>(false));
  }
  SUBCASE("Schlumberger Multiflex 3k: T=0 by default (no TD1), no TCK (ISO 7816-3 section 8.2.5)") {
    const auto a = atr("3B021450");
    REQUIRE(a);
    CHECK((a->t0 && !a->t1 && a->checksum_ok));
    CHECK(a->historical == Bytes{0x14, 0x50});
  }
  SUBCASE("category 00: COMPACT-TLV objects, then the three status indicator bytes") {
    const auto a = atr("3B8880010073000040009000AA");
    REQUIRE(a);
    CHECK(a->checksum_ok);
    CHECK(a->extended_length == std::optional<bool>(true));
  }
}

TEST_CASE("parse_atr: bytes that are not an ATR, and damaged ones") {
  CHECK_FALSE(atr(""));
  CHECK_FALSE(atr("3B"));
  CHECK_FALSE(atr("3C00"));            // TS neither 3B nor 3F
  CHECK(atr("3F00"));                  // inverse convention: pcscd hands the bytes decoded
  CHECK_FALSE(atr("3BFD1300"));        // interface bytes cut short
  CHECK_FALSE(atr("3B0214"));          // a historical byte missing
  CHECK_FALSE(atr("3B80800101FF"));    // a byte after TCK
  CHECK_FALSE(atr("3B021450FF"));      // T=0 only: no TCK, so a byte too many
  CHECK_FALSE(atr("3B808001"));        // T=1 named: TCK missing
  const auto bad_tck = atr("3B80800102");
  REQUIRE(bad_tck);
  CHECK_FALSE(bad_tck->checksum_ok);
  CHECK_FALSE(parse_atr(Bytes(34, 0x3B)));  // longer than any ATR (33 bytes)
  // Card capabilities of fewer than three bytes, or a COMPACT-TLV object running past the end: unknown.
  const auto two = atr("3B84800180720000F7");
  REQUIRE(two);
  CHECK_FALSE(two->extended_length.has_value());
  const auto cut = atr("3B838001807905FE");
  REQUIRE(cut);
  CHECK_FALSE(cut->extended_length.has_value());
}

TEST_CASE("open_device_channel: pcsc:NAME is a reader, HOST:PORT a TCP link, anything else a config error") {
  auto reader = open_device_channel("pcsc:keyline vpcd 0 00 00");
  CHECK(dynamic_cast<pcsc::PcscChannel*>(reader.get()) != nullptr);
  CHECK(reader->address() == "pcsc:keyline vpcd 0 00 00");
  CHECK_FALSE(reader->connected());
  CHECK_FALSE(reader->extended_length());  // nothing known before connect()
  auto tcp = open_device_channel("127.0.0.1:7001");
  CHECK(dynamic_cast<DeviceLink*>(tcp.get()) != nullptr);
  CHECK(tcp->address() == "127.0.0.1:7001");
  CHECK(tcp->extended_length());
  tcp->disable_extended_length();
  CHECK_FALSE(tcp->extended_length());
  for (const char* bad : {"pcsc:", "7001", "host:", "host:port", "", "pcsc"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(open_device_channel(bad), ConfigError);
  }
}
