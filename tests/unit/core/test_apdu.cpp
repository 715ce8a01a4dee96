#include <doctest/doctest.h>

#include <functional>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "keyline/core/apdu.h"
#include "vector_file.h"

using namespace keyline::core;

namespace {

SecureBytes sb(const std::string& hex) {
  const Bytes b = from_hex(hex);
  return SecureBytes(b.begin(), b.end());
}
std::string hx(const SecureBytes& b) { return to_hex(b.data(), b.size()); }

SecureBytes pattern(std::size_t n) {
  SecureBytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>(i * 7 + 3);
  return b;
}

}  // namespace

TEST_CASE("ISO 7816-4 section 5.2 encoding examples, both directions") {
  const auto vf = keyline::test::read_vectors("apdu_iso7816_4.txt");
  CHECK(vf.source.find("7816-4") != std::string::npos);
  std::set<std::string> cases;
  for (const auto& row : vf.rows) {
    REQUIRE(row.size() == 4);
    const std::string& kase = row[0];
    INFO(kase << " " << row[1].substr(0, 40));
    const SecureBytes wire = sb(row[1]);
    const SecureBytes data = row[2] == "-" ? SecureBytes{} : sb(row[2]);
    const std::optional<std::uint32_t> le =
        row[3] == "-" ? std::nullopt : std::optional<std::uint32_t>(static_cast<std::uint32_t>(std::stoul(row[3])));
    const bool ext = kase.back() == 'E';
    cases.insert(kase);

    const CommandApdu c = decode_command(wire);
    CHECK(c.cla == wire[0]);
    CHECK(c.ins == wire[1]);
    CHECK(c.p1 == wire[2]);
    CHECK(c.p2 == wire[3]);
    CHECK(c.data == data);
    CHECK(c.le == le);
    CHECK(c.extended == ext);
    CHECK(encode_command(c) == wire);

    CommandApdu built;
    built.cla = wire[0];
    built.ins = wire[1];
    built.p1 = wire[2];
    built.p2 = wire[3];
    built.data = data;
    built.le = le;
    built.extended = ext;
    CHECK(hx(encode_command(built)) == row[1]);
  }
  CHECK(cases == std::set<std::string>{"1", "2S", "3S", "4S", "2E", "3E", "4E"});
}

TEST_CASE("encode_command picks the extended form only when needed") {
  CommandApdu c;
  c.cla = 0x80;
  c.ins = 0xE2;
  c.data = pattern(255);
  c.le = 256;
  CHECK(encode_command(c).size() == 4 + 1 + 255 + 1);  // still short
  c.data = pattern(256);
  const SecureBytes e = encode_command(c);
  CHECK(e.size() == 4 + 3 + 256 + 2);  // Lc forces extended, so Le goes extended too
  CHECK(hx(SecureBytes(e.begin() + 4, e.begin() + 7)) == "000100");
  CHECK(hx(SecureBytes(e.end() - 2, e.end())) == "0100");
  c.data = pattern(10);
  c.le = 257;
  CHECK(encode_command(c).size() == 4 + 3 + 10 + 2);  // Le forces extended, so Lc goes extended too
  c.data.clear();
  c.le.reset();
  c.extended = true;
  CHECK(hx(encode_command(c)) == "80E20000");  // case 1 has no length field to extend
}

TEST_CASE("encode_command refuses what no APDU can carry") {
  CommandApdu c;
  c.data = SecureBytes(65536, 0);
  CHECK_THROWS_CODE(encode_command(c), BadApdu);
  c.data.clear();
  c.le = 65537;
  CHECK_THROWS_CODE(encode_command(c), BadApdu);
  c.le = 0;
  CHECK_THROWS_CODE(encode_command(c), BadApdu);
  c.data = SecureBytes(65535, 0);
  c.le = 65536;
  CHECK(encode_command(c).size() == 4 + 3 + 65535 + 2);
}

TEST_CASE("decode_command: lying Lc/Le and truncation are BadApdu") {
  for (const char* bad : {
           "",                        // nothing
           "80",                      // short header
           "80CA9F",                  // 3 bytes
           "00A4040008F04B4559",      // Lc 8, 4 present
           "00A4040002AABBCCDD",      // Lc 2, 4 present (not case 4S: two extra bytes)
           "00A40400020001020304",    // Lc 2, 5 bytes follow: neither 3S nor 4S
       }) {
    INFO(std::string(bad));
    CHECK_THROWS_CODE(decode_command(sb(bad)), BadApdu);
  }
  CHECK_THROWS_CODE(decode_command(sb("80CA9F7F0000")), BadApdu);          // 00 then one byte
  CHECK_THROWS_CODE(decode_command(sb("80E20000000000AA")), BadApdu);      // extended Lc 0
  CHECK_THROWS_CODE(decode_command(sb("80E2000000000000")), BadApdu);      // extended Lc 0 + Le
  CHECK_THROWS_CODE(decode_command(sb("80E2000000000AAABB")), BadApdu);    // ext Lc 10, 2 present
  CHECK_THROWS_CODE(decode_command(sb("80E2000000FFFF00")), BadApdu);      // ext Lc 65535, 1 present
  CHECK_THROWS_CODE(decode_command(sb("80E200000000020102AA")), BadApdu);  // one Le byte: not 3E nor 4E
  CHECK_THROWS_CODE(decode_command(sb("80E200000000020102AABBCC")), BadApdu);  // three Le bytes
  // Every prefix of a valid case 4E APDU is refused or decodes as a different, consistent case.
  CommandApdu c;
  c.cla = 0x80;
  c.ins = 0xE2;
  c.data = pattern(300);
  c.le = 512;
  const SecureBytes wire = encode_command(c);
  for (std::size_t n = 0; n < wire.size(); ++n) {
    try {
      const CommandApdu d = decode_command(wire.data(), n);
      CHECK(encode_command(d) == SecureBytes(wire.begin(), wire.begin() + static_cast<std::ptrdiff_t>(n)));
    } catch (const FormatError& e) {
      CHECK(e.code() == ErrorCode::BadApdu);
    }
  }
}

TEST_CASE("responses: decode, encode, too short") {
  const ResponseApdu r = decode_response(sb("0102039000"));
  CHECK(hx(r.data) == "010203");
  CHECK(r.sw == sw::ok);
  CHECK(r.sw1() == 0x90);
  CHECK(r.sw2() == 0x00);
  CHECK(hx(encode_response(r)) == "0102039000");
  CHECK(decode_response(sb("6A82")).data.empty());
  CHECK(decode_response(sb("6A82")).sw == sw::file_not_found);
  CHECK(decode_response(Bytes{0x61, 0x10}).sw == 0x6110);
  CHECK_THROWS_CODE(decode_response(sb("")), BadApdu);
  CHECK_THROWS_CODE(decode_response(sb("90")), BadApdu);
}

TEST_CASE("sw_text names the status words keyline uses") {
  CHECK(sw_text(0x9000).rfind("9000 ", 0) == 0);
  CHECK(sw_text(0x6985) == "6985 conditions of use not satisfied");
  for (std::uint16_t s : {sw::ok, sw::wrong_length, sw::security_not_satisfied, sw::conditions_not_satisfied,
                          sw::wrong_data, sw::file_not_found, sw::incorrect_p1p2, sw::referenced_data_not_found,
                          sw::ins_not_supported, sw::cla_not_supported, sw::unknown_error}) {
    INFO(s);
    CHECK(sw_text(s).find("unknown") == std::string::npos);
    CHECK(sw_text(s).size() > 5);
  }
  CHECK(sw_text(0x6110).find("16 bytes") != std::string::npos);
  CHECK(sw_text(0x6100).find("256") != std::string::npos);
  CHECK(sw_text(0x6C2A).find("42") != std::string::npos);
  CHECK(sw_text(0x1234) == "1234 unknown status");
}

TEST_CASE("chain_command: CLA bit 0x10 on all but the last, Le on the last only") {
  CommandApdu c;
  c.cla = 0x80;
  c.ins = 0xE2;
  c.p1 = 0x08;
  c.data = pattern(600);
  c.le = 256;
  const auto parts = chain_command(c, 255);
  REQUIRE(parts.size() == 3);
  SecureBytes joined;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const bool last = i + 1 == parts.size();
    CHECK(parts[i].chained() == !last);
    CHECK(parts[i].cla == (last ? 0x80 : 0x90));
    CHECK(parts[i].ins == 0xE2);
    CHECK(parts[i].p1 == 0x08);
    CHECK(parts[i].le.has_value() == last);
    CHECK(parts[i].data.size() <= 255);
    joined.insert(joined.end(), parts[i].data.begin(), parts[i].data.end());
  }
  CHECK(parts[2].data.size() == 90);
  CHECK(joined == c.data);
  CHECK(chain_command(c, 600).size() == 1);
  CHECK(chain_command(c, 300).size() == 2);
  CommandApdu empty;
  CHECK(chain_command(empty).size() == 1);
  CHECK_THROWS_CODE(chain_command(c, 0), BadApdu);
}

TEST_CASE("ResponseChainer serves 61XX pieces and the final status word") {
  ResponseChainer ch;
  ResponseApdu full;
  full.data = pattern(600);
  full.sw = sw::ok;
  ResponseApdu r = ch.start(full);
  CHECK(r.data.size() == 256);
  CHECK(r.sw == 0x6100);  // 344 left: "256 or more"
  CHECK(ch.pending());
  r = ch.next(256);
  CHECK(r.data.size() == 256);
  CHECK(r.sw == 0x6158);  // 88 left
  r = ch.next(0x58);
  CHECK(r.data.size() == 88);
  CHECK(r.sw == sw::ok);
  CHECK_FALSE(ch.pending());
  CHECK(ch.next(256).sw == sw::conditions_not_satisfied);

  // Short responses pass through whole; the original status word is kept.
  ResponseApdu small;
  small.data = pattern(10);
  small.sw = sw::referenced_data_not_found;
  r = ch.start(small);
  CHECK(r.data == small.data);
  CHECK(r.sw == sw::referenced_data_not_found);
  CHECK_FALSE(ch.pending());

  // A smaller GET RESPONSE Le gets a smaller piece.
  r = ch.start(full, 100);
  CHECK(r.data.size() == 100);
  CHECK(r.sw == 0x6100);
  r = ch.next(10);
  CHECK(r.data.size() == 10);
  CHECK(r.sw == 0x6100);  // 490 left: "256 or more"
  while (ch.pending()) r = ch.next(256);
  CHECK(r.data.size() == 600 - 110 - 4 * 100);  // pieces never exceed the chunk given to start()
  CHECK(r.sw == sw::ok);
  r = ch.start(full, 100);
  ch.reset();
  CHECK_FALSE(ch.pending());
  CHECK(ch.next(256).sw == sw::conditions_not_satisfied);
}

TEST_CASE("transceive: chaining out, GET RESPONSE in, against a ResponseChainer device") {
  // A small device: collects chained STORE DATA, echoes the data back reversed, long answers via 61XX.
  ResponseChainer chainer;
  SecureBytes collected;
  std::vector<std::string> seen;  // command headers as sent
  auto transmit = [&](const SecureBytes& wire) -> SecureBytes {
    const CommandApdu c = decode_command(wire);
    seen.push_back(hx(SecureBytes(wire.begin(), wire.begin() + 4)));
    if (c.ins == 0xC0) return encode_response(chainer.next(c.le.value_or(256)));
    collected.insert(collected.end(), c.data.begin(), c.data.end());
    if (c.chained()) return encode_response(ResponseApdu{{}, sw::ok});
    ResponseApdu full;
    full.data.assign(collected.rbegin(), collected.rend());
    full.sw = sw::ok;
    return encode_response(chainer.start(full, 200));
  };

  CommandApdu c;
  c.cla = 0x80;
  c.ins = 0xE2;
  c.data = pattern(700);
  c.le = 256;
  const ResponseApdu r = transceive(transmit, c, 255);
  CHECK(r.sw == sw::ok);
  CHECK(collected == c.data);
  SecureBytes reversed(c.data.rbegin(), c.data.rend());
  CHECK(r.data == reversed);
  // 3 chained commands (255 + 255 + 190), then 3 GET RESPONSE for 700 bytes in 200-byte pieces.
  CHECK(seen == std::vector<std::string>{"90E20000", "90E20000", "80E20000", "00C00000", "00C00000", "00C00000"});
}

TEST_CASE("transceive: stops on a chaining error, retries 6CXX once, refuses endless 61XX") {
  int calls = 0;
  auto refuse_chain = [&](const SecureBytes&) {
    ++calls;
    return Bytes{0x69, 0x85};
  };
  CommandApdu c;
  c.cla = 0x80;
  c.ins = 0xE2;
  c.data = pattern(600);
  CHECK(transceive(refuse_chain, c).sw == sw::conditions_not_satisfied);
  CHECK(calls == 1);

  std::vector<std::optional<std::uint32_t>> les;
  auto wrong_le = [&](const SecureBytes& wire) {
    const CommandApdu d = decode_command(wire);
    les.push_back(d.le);
    if (d.le != 42u) return Bytes{0x6C, 0x2A};
    Bytes out(42, 0x5A);
    out.push_back(0x90);
    out.push_back(0x00);
    return out;
  };
  CommandApdu get_cplc;
  get_cplc.cla = 0x80;
  get_cplc.ins = 0xCA;
  get_cplc.p1 = 0x9F;
  get_cplc.p2 = 0x7F;
  get_cplc.le = 256;
  const ResponseApdu r = transceive(wrong_le, get_cplc);
  CHECK(r.sw == sw::ok);
  CHECK(r.data.size() == 42);
  CHECK(les.size() == 2);

  auto endless = [](const SecureBytes&) { return Bytes{0x61, 0x00}; };
  CHECK_THROWS_CODE(transceive(endless, get_cplc), BadApdu);
  auto garbage = [](const SecureBytes&) { return Bytes{0x90}; };
  CHECK_THROWS_CODE(transceive(garbage, get_cplc), BadApdu);
}

namespace {

// A device answering an APDU with `n` bytes of 0x5A and `sw` (Answer{n, sw}), counting the calls.
using Answer = std::pair<std::size_t, std::uint16_t>;
struct Scripted {
  std::function<Answer(const CommandApdu&)> answer;
  int calls = 0;
  SecureBytes operator()(const SecureBytes& wire) {
    ++calls;
    const auto [n, sw] = answer(decode_command(wire));
    SecureBytes out(n, 0x5A);
    out.push_back(static_cast<std::uint8_t>(sw >> 8));
    out.push_back(static_cast<std::uint8_t>(sw));
    return out;
  }
};

CommandApdu get_data(std::optional<std::uint32_t> le, bool extended = false) {
  CommandApdu c;
  c.cla = 0x80;
  c.ins = 0xCA;
  c.p1 = 0xDF;
  c.p2 = 0x20;
  c.le = le;
  c.extended = extended;
  return c;
}

// The message of the BadApdu a transceive throws ("" when it throws none or another error).
template <class T>
std::string bad_apdu_message(T&& transmit, const CommandApdu& c, std::size_t max_response = kMaxResponseDefault) {
  try {
    transceive(transmit, c, 255, max_response);
  } catch (const FormatError& e) {
    if (e.code() == ErrorCode::BadApdu) return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("transceive: no answer carries more than the Ne of the APDU it answers (ISO 7816-4 section 5.1)") {
  Scripted exact{[](const CommandApdu&) { return Answer{42, sw::ok}; }};
  CHECK(transceive(std::ref(exact), get_data(42u)).data.size() == 42);
  Scripted one_more{[](const CommandApdu&) { return Answer{43, sw::ok}; }};
  const std::string m = bad_apdu_message(std::ref(one_more), get_data(42u));
  CHECK(m == "answer to 80 CA DF 20 carries 43 bytes where Le allows 42");

  // No Le: Ne is 0, so any data is too much; a bare status word is the answer.
  Scripted one_byte{[](const CommandApdu&) { return Answer{1, sw::ok}; }};
  CHECK(bad_apdu_message(std::ref(one_byte), get_data(std::nullopt)) ==
        "answer to 80 CA DF 20 carries 1 bytes where Le allows 0");
  Scripted bare{[](const CommandApdu&) { return Answer{0, sw::ok}; }};
  CHECK(transceive(std::ref(bare), get_data(std::nullopt)).sw == sw::ok);

  // A chained part has no Le either.
  CommandApdu store = get_data(std::nullopt);
  store.ins = 0xE2;
  store.data = pattern(600);
  Scripted chatty_chain{[](const CommandApdu& c) {
    return Answer{c.chained() ? 2 : 0, sw::ok};
  }};
  CHECK(bad_apdu_message(std::ref(chatty_chain), store).find("carries 2 bytes where Le allows 0") != std::string::npos);
  CHECK(chatty_chain.calls == 1);

  // 6C2A: the re-sent command's Le is 42, and the answer to it is held to that.
  Scripted wrong_le{[](const CommandApdu& c) {
    return c.le == 42u ? Answer{43, sw::ok} : Answer{0, 0x6C2A};
  }};
  CHECK(bad_apdu_message(std::ref(wrong_le), get_data(256u)) ==
        "answer to 80 CA DF 20 carries 43 bytes where Le allows 42");

  // 6110 asks GET RESPONSE for 16 bytes; 17 are refused, naming the command and never its data.
  Scripted long_piece{[](const CommandApdu& c) {
    return c.ins == 0xC0 ? Answer{17, sw::ok} : Answer{256, 0x6110};
  }};
  const std::string gr = bad_apdu_message(std::ref(long_piece), get_data(256u));
  CHECK(gr == "GET RESPONSE for 80 CA DF 20 carries 17 bytes where Le allows 16");
  CHECK(long_piece.calls == 2);

  // Extended Le 0000 (65536) takes the largest answer a frame carries.
  Scripted full_frame{[](const CommandApdu&) { return Answer{65533, sw::ok}; }};
  CHECK(transceive(std::ref(full_frame), get_data(65536u, true)).data.size() == 65533);
}

TEST_CASE("transceive: the gathered answer stops at the caller's cap, at 1 MiB by default") {
  ResponseChainer chainer;
  ResponseApdu full;
  full.data = pattern(700);
  auto device = [&](const SecureBytes& wire) {
    const CommandApdu c = decode_command(wire);
    return encode_response(c.ins == 0xC0 ? chainer.next(*c.le) : chainer.start(full, 200));
  };
  CHECK(transceive(device, get_data(256u), 255, 700).data == full.data);
  CHECK(bad_apdu_message(device, get_data(256u), 699) ==
        "GET RESPONSE for 80 CA DF 20 exceeds the 699-byte cap on its answer");
  CHECK(bad_apdu_message(device, get_data(256u), 100) ==
        "answer to 80 CA DF 20 exceeds the 100-byte cap on its answer");

  // A full extended frame, then 256 bytes and 6100 for ever: refused once past 1 MiB, after
  // (2^20 - 65533) / 256 rounded up GET RESPONSE, not after the 4096 rounds a round limit allows.
  Scripted endless{[](const CommandApdu& c) {
    return Answer{c.ins == 0xC0 ? 256 : 65533, 0x6100};
  }};
  CHECK(bad_apdu_message(std::ref(endless), get_data(65536u, true)).find("1048576-byte cap") != std::string::npos);
  CHECK(endless.calls == 1 + 3841);

  // A GET RESPONSE that brings nothing and announces more again is refused at once.
  Scripted stalling{[](const CommandApdu&) { return Answer{0, 0x6100}; }};
  CHECK(bad_apdu_message(std::ref(stalling), get_data(256u)) ==
        "GET RESPONSE for 80 CA DF 20 brings no data yet announces more");
  CHECK(stalling.calls == 2);
}
