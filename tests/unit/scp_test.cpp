// SCP03 secure messaging and SCP11a (core/scp03.h, core/scp11.h, docs/channel.md): every transcript
// of tests/vectors/globalplatform as known answers (host side byte for byte, and the card side
// answering them), then a host <-> card round trip with fresh keys and the attacks the card and the
// host must refuse.
#include <botan/block_cipher.h>
#include <botan/cipher_mode.h>
#include <botan/ec_group.h>
#include <botan/ecdh.h>
#include <botan/mac.h>
#include <botan/system_rng.h>
#include <doctest/doctest.h>

#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "keyline/core/apdu.h"
#include "keyline/core/scp03.h"
#include "keyline/core/scp11.h"
#include "vector_file.h"

using namespace keyline::core;

namespace {

// "key = value" lines of one transcript (tests/vectors/globalplatform/README.md, "File format").
struct Transcript {
  std::map<std::string, std::string> values;
  Bytes operator[](const std::string& key) const {
    const auto it = values.find(key);
    REQUIRE_MESSAGE(it != values.end(), "no " << key << " in the transcript");
    return from_hex(it->second);
  }
  bool has(const std::string& key) const { return values.count(key) != 0; }
};

Transcript load(const std::string& file) {
  const auto vf = keyline::test::read_vectors("globalplatform/" + file);
  Transcript t;
  for (const auto& row : vf.rows) {
    REQUIRE_MESSAGE(row.size() == 3, "not 'key = value': " << row.front());
    REQUIRE(row[1] == "=");
    t.values[row[0]] = row[2];
  }
  return t;
}

SecureBytes secure(const Bytes& b) { return SecureBytes(b.begin(), b.end()); }
Bytes plain(const SecureBytes& b) { return Bytes(b.begin(), b.end()); }
Bytes encoded(const CommandApdu& c) { return plain(encode_command(c)); }
Bytes encoded(const ResponseApdu& r) { return plain(encode_response(r)); }
Bytes head(const Bytes& b, std::size_t n) {
  return Bytes(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n));
}

// A DeviceChannel that replays a transcript: each command must be the recorded C-APDU, byte for
// byte, and gets the recorded R-APDU.
class ReplayChannel final : public DeviceChannel {
 public:
  void expect(const Bytes& capdu, const Bytes& rapdu) { m_steps.push_back({capdu, rapdu}); }
  void connect() override {}
  void close() noexcept override { m_closed = true; }
  bool connected() const noexcept override { return !m_closed; }
  ResponseApdu transmit(const CommandApdu& command, std::size_t) override {
    REQUIRE_MESSAGE(!m_steps.empty(), "an unexpected command " << to_hex(encoded(command)));
    const auto step = m_steps.front();
    m_steps.pop_front();
    CHECK(to_hex(encoded(command)) == to_hex(step.first));
    return decode_response(step.second);
  }
  bool extended_length() const noexcept override { return false; }
  void disable_extended_length() noexcept override {}
  const std::string& address() const noexcept override { return m_address; }
  const Bytes& atr() const noexcept override { return m_atr; }
  bool done() const { return m_steps.empty(); }

 private:
  std::deque<std::pair<Bytes, Bytes>> m_steps;
  bool m_closed = false;
  std::string m_address = "replay";
  Bytes m_atr;
};

// --- SCP03 -----------------------------------------------------------------------------------------

void check_scp03(const std::string& file, std::size_t n) {
  const Transcript t = load(file);
  const Bytes host = t["host_challenge"];
  const Bytes card = t["initialize_update.rapdu.card_challenge"];
  REQUIRE(host.size() == n);
  // INITIALIZE UPDATE's answer: diversification data (10) || key info (3) || card challenge || card
  // cryptogram.
  const Bytes iu = t["initialize_update.rapdu"];
  CHECK(Bytes(iu.begin() + 13, iu.begin() + 13 + static_cast<std::ptrdiff_t>(n)) == card);

  const scp::SessionKeys keys = scp::derive_scp03_session(
      {secure(t["static.enc"]), secure(t["static.mac"]), secure(t["static.dek"])}, host, card);
  CHECK(plain(keys.enc) == t["derived.s_enc"]);
  CHECK(plain(keys.mac) == t["derived.s_mac"]);
  CHECK(plain(keys.rmac) == t["derived.s_rmac"]);
  CHECK(scp::scp03_cryptogram(keys.mac, scp::kdf_constant::card_cryptogram, host, card, n) ==
        t["initialize_update.rapdu.card_cryptogram"]);
  const Bytes host_cryptogram =
      scp::scp03_cryptogram(keys.mac, scp::kdf_constant::host_cryptogram, host, card, n);
  CHECK(host_cryptogram == t["derived.host_cryptogram"]);

  scp::SecureMessaging host_side(keys, Bytes(16, 0), n);
  scp::SecureMessaging card_side(keys, Bytes(16, 0), n);
  const CommandApdu ea_plain = decode_command(t["derived.external_authenticate.plain_capdu"]);
  CHECK(plain(ea_plain.data) == host_cryptogram);
  const CommandApdu ea = host_side.mac_command(ea_plain);
  CHECK(to_hex(encoded(ea)) == to_hex(t["external_authenticate.capdu"]));
  CHECK(encoded(card_side.unmac_command(ea)) == encoded(ea_plain));

  std::uint32_t counter = 1;
  for (const char* step : {"get_status_packages", "get_status_applets", "get_status_issuer_domain"}) {
    INFO(file << " " << std::string(step));
    const std::string s = step;
    const CommandApdu command = decode_command(t[s + ".plain_capdu"]);
    const CommandApdu wrapped = host_side.wrap_command(command);
    CHECK(to_hex(encoded(wrapped)) == to_hex(t[s + ".capdu"]));
    CHECK(host_side.counter() == counter + 1);
    const ResponseApdu answer = host_side.unwrap_response(decode_response(t[s + ".rapdu"]));
    CHECK(answer.sw == sw::ok);
    CHECK(to_hex(plain(answer.data)) == to_hex(t[s + ".plain_rapdu_data"]));
    // The card side is deterministic too: it reads the recorded command and answers the recorded bytes.
    CHECK(encoded(card_side.unwrap_command(decode_command(t[s + ".capdu"]))) == encoded(command));
    ResponseApdu plain_answer;
    plain_answer.data = secure(t[s + ".plain_rapdu_data"]);
    const ResponseApdu card_answer = card_side.wrap_response(plain_answer);
    // The recorded AES-128 card padded the 11 bytes of the ISD entry to 32; keyline pads to the next
    // block (ISO 9797-1 method 2), so that one answer is 16 bytes shorter and not the recorded one.
    if (t[s + ".rapdu.encrypted_data"].size() == ((plain_answer.data.size() / 16) + 1) * 16)
      CHECK(to_hex(encoded(card_answer)) == to_hex(t[s + ".rapdu"]));
    else
      CHECK(card_answer.data.size() < t[s + ".rapdu"].size() - 2);
    ++counter;
  }
}

TEST_CASE("SCP03 AES-128 S8 transcript") { check_scp03("scp03_aes128_s8.txt", 8); }
TEST_CASE("SCP03 AES-256 S8 transcript") { check_scp03("scp03_aes256_s8.txt", 8); }
TEST_CASE("SCP03 AES-128 S16 transcript") { check_scp03("scp03_aes128_s16.txt", 16); }

TEST_CASE("scp03_kdf refuses keys and lengths SCP03 does not have") {
  const Bytes context(16, 1);
  CHECK_THROWS_CODE(scp::scp03_kdf(SecureBytes(24, 1), 0x04, context, 128), Crypto);
  CHECK_THROWS_CODE(scp::scp03_kdf(SecureBytes(16, 1), 0x04, context, 100), Crypto);
  CHECK_THROWS_CODE(scp::scp03_kdf(SecureBytes(16, 1), 0x04, context, 320), Crypto);
  CHECK(scp::scp03_kdf(SecureBytes(32, 1), 0x04, context, 256).size() == 32);
}

// --- SCP11 -----------------------------------------------------------------------------------------

// Joins the data of a GET DATA answer given in 61XX parts (each R-APDU less its SW).
Bytes join_parts(const std::vector<Bytes>& rapdus) {
  Bytes joined;
  for (const auto& r : rapdus) joined.insert(joined.end(), r.begin(), r.end() - 2);
  return joined;
}

scp11::KeyRef key_ref(const Transcript& t, const std::string& who) {
  return {t[who + ".key_ref.kid"].at(0), t[who + ".key_ref.kvn"].at(0)};
}

// GET DATA BF21 and the store it answers (the caller's part of the handshake).
void check_scp11_store(const Transcript& t) {
  CHECK(encoded(scp11::get_certificate_store_command(key_ref(t, "sd"))) == t["get_data.capdu"]);
  const Bytes store = join_parts({t["get_data.rapdu"], t["get_response_1.rapdu"], t["get_response_2.rapdu"]});
  CHECK(store == t["get_data.response_data"]);
  const auto certificates = scp11::parse_certificate_store(secure(store));
  REQUIRE(certificates.size() == 1);
  CHECK(certificates[0] == t["sd.certificate"]);
}

// The pieces, each against its value in the transcript, so that a failure names the step.
void check_scp11_pieces(const Transcript& t, std::uint8_t scp_parameter) {
  const auto pso = scp11::perform_security_operation_commands({t["oce.certificate"]}, key_ref(t, "oce"));
  REQUIRE(pso.size() == 3);
  for (std::size_t i = 0; i < pso.size(); ++i)
    CHECK(to_hex(encoded(pso[i])) ==
          to_hex(t["perform_security_operation_" + std::to_string(i + 1) + ".capdu"]));
  const CommandApdu ma =
      scp11::mutual_authenticate_command(key_ref(t, "sd"), t["oce.epk.point"], scp_parameter);
  CHECK(to_hex(encoded(ma)) == to_hex(t["mutual_authenticate.capdu"]));

  const Bytes epk_sd = t["mutual_authenticate.rapdu.epk_sd"];
  CHECK(plain(scp11::ecdh_p256(secure(t["oce.esk.scalar"]), epk_sd)) == t["derived.sh_see"]);
  CHECK(plain(scp11::ecdh_p256(secure(t["oce.sk.scalar"]), t["sd.pk.point"])) == t["derived.sh_sss"]);
  const scp11::Scp11Keys keys =
      scp11::derive_scp11_keys(secure(t["derived.sh_see"]), secure(t["derived.sh_sss"]));
  CHECK(plain(keys.receipt_key) == t["derived.receipt_key"]);
  CHECK(plain(keys.session.enc) == t["derived.s_enc"]);
  CHECK(plain(keys.session.mac) == t["derived.s_mac"]);
  CHECK(plain(keys.session.rmac) == t["derived.s_rmac"]);
  CHECK(plain(keys.session.dek) == t["derived.s_dek"]);
  const Bytes epk_sd_tlv = head(t["mutual_authenticate.rapdu"], 3 + 65);
  CHECK(scp11::scp11_receipt(keys.receipt_key, plain(ma.data), epk_sd_tlv) ==
        t["mutual_authenticate.rapdu.receipt"]);
  const Bytes ma_answer = head(t["mutual_authenticate.rapdu"], 86);
  const auto answer = scp11::parse_mutual_authenticate_answer(ma_answer.data(), ma_answer.size());
  CHECK(answer.ephemeral_point == epk_sd);
  CHECK(answer.receipt == t["mutual_authenticate.rapdu.receipt"]);
  CHECK(scp11::encode_mutual_authenticate_answer(answer) == ma_answer);
}

// The whole host handshake over a channel replaying the card's answers, then one secured command.
void check_scp11_session(const Transcript& t, std::uint8_t scp_parameter) {
  ReplayChannel card;
  for (const char* step : {"perform_security_operation_1", "perform_security_operation_2",
                           "perform_security_operation_3", "mutual_authenticate"})
    card.expect(t[std::string(step) + ".capdu"], t[std::string(step) + ".rapdu"]);
  // SecureChannel asks for the answer (Le 00) of every secured command, which carries at least its
  // R-MAC; Le is outside the C-MAC, so the recorded command is otherwise byte for byte the same.
  Bytes get_status = t["get_status_packages.capdu"];
  get_status.push_back(0x00);
  card.expect(get_status, t["get_status_packages.rapdu"]);
  scp11::HostParams params;
  params.sd = key_ref(t, "sd");
  params.oce = key_ref(t, "oce");
  params.oce_chain = {t["oce.certificate"]};
  const SecureBytes sk_oce = secure(t["oce.sk.scalar"]);
  params.static_ecdh = [&](const Bytes& point) { return scp11::ecdh_p256(sk_oce, point); };
  params.ephemeral_scalar_for_test = secure(t["oce.esk.scalar"]);
  params.scp_parameter = scp_parameter;
  scp11::SecureChannel channel(card, scp11::open_host_session(card, params, t["sd.pk.point"]));
  const ResponseApdu status = channel.transmit(decode_command(t["get_status_packages.plain_capdu"]));
  CHECK(status.sw == sw::ok);
  CHECK(to_hex(plain(status.data)) == to_hex(t["get_status_packages.plain_rapdu_data"]));
  CHECK(card.done());
}

void check_scp11(const std::string& file, std::uint8_t scp_parameter) {
  const Transcript t = load(file);
  check_scp11_store(t);
  check_scp11_pieces(t, scp_parameter);
  check_scp11_session(t, scp_parameter);
}

TEST_CASE("SCP11a P-256 AES-128 S8 transcript") {
  check_scp11("scp11a_p256_aes128_s8.txt", scp11::kScp11aParameter);
  // keyline's card reads this MUTUAL AUTHENTICATE.
  const Transcript t = load("scp11a_p256_aes128_s8.txt");
  const auto request = scp11::parse_mutual_authenticate(decode_command(t["mutual_authenticate.capdu"]));
  CHECK(request.sd.kid == 0x11);
  CHECK(request.sd.kvn == 0x03);
  CHECK(request.control_reference == t["mutual_authenticate.capdu.control_reference_template"]);
  CHECK(request.ephemeral_point == t["oce.epk.point"]);
}

TEST_CASE("SCP11c P-256 AES-128 S8 transcript") {
  check_scp11("scp11c_p256_aes128_s8.txt", scp11::kScp11cParameter);
  // keyline's card runs SCP11a only: parameter 03 is refused.
  const Transcript t = load("scp11c_p256_aes128_s8.txt");
  CHECK_THROWS_CODE(scp11::parse_mutual_authenticate(decode_command(t["mutual_authenticate.capdu"])),
                    BadApdu);
}

TEST_CASE("PERFORM SECURITY OPERATION parts of a two-certificate chain") {
  const Bytes a(300, 0xAA), b(10, 0xBB);
  const auto commands = scp11::perform_security_operation_commands({a, b}, {0x10, 0x03});
  REQUIRE(commands.size() == 3);
  CHECK(to_hex(head(encoded(commands[0]), 5)) == "902A8390FF");  // part of the first, more follow
  CHECK(to_hex(head(encoded(commands[1]), 5)) == "802A03902D");  // last part of the first, another follows
  CHECK(to_hex(head(encoded(commands[2]), 5)) == "802A03100A");  // the OCE certificate
  CHECK_THROWS_CODE(scp11::perform_security_operation_commands({}, {0x10, 0x03}), BadCertificateStore);
}

TEST_CASE("certificate store: the four GET DATA BF21 cases") {
  const Transcript t = load("scp11_get_data_certificate_store.txt");
  const std::map<std::string, std::vector<std::string>> cases = {
      {"single_gp", {"cert.gp_last"}},
      {"single_x509", {"cert.x509_last"}},
      {"gp_chain", {"cert.gp_first", "cert.gp_last"}},
      {"x509_chain", {"cert.x509_first", "cert.x509_last"}},
  };
  CHECK(encoded(scp11::get_certificate_store_command({0x11, 0x03})) == t["get_data.capdu"]);
  for (const auto& entry : cases) {
    const std::string& name = entry.first;  // not a structured binding: INFO captures it (clang, C++17)
    const std::vector<std::string>& expected = entry.second;
    INFO(name);
    std::vector<Bytes> parts;
    for (int i = 0; t.has("case." + name + ".rapdu." + std::to_string(i)); ++i)
      parts.push_back(t["case." + name + ".rapdu." + std::to_string(i)]);
    const Bytes joined = join_parts(parts);
    CHECK(joined == t["case." + name + ".joined_data"]);
    const auto got = scp11::parse_certificate_store(joined.data(), joined.size());
    REQUIRE(got.size() == expected.size());
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(got[i] == t[expected[i]]);
    CHECK(scp11::encode_certificate_store(got) == joined);
  }
}

TEST_CASE("certificate store: strict TLV") {
  const Bytes cert = from_hex("3003020101");
  auto parse = [](const Bytes& b) { return scp11::parse_certificate_store(b.data(), b.size()); };
  CHECK(parse(from_hex("BF21053003020101")).size() == 1);
  CHECK_THROWS_CODE(parse(from_hex("BF2105300302010100")), BadCertificateStore);  // a byte after BF21
  CHECK_THROWS_CODE(parse(from_hex("BF22053003020101")), BadCertificateStore);    // another tag
  CHECK_THROWS_CODE(parse(from_hex("BF2106300302010100")),
                    BadCertificateStore);                                     // a byte after the certificate
  CHECK_THROWS_CODE(parse(from_hex("BF2104300302010")), BadHex);              // (odd hex: the helper)
  CHECK_THROWS_CODE(parse(from_hex("BF210430030201")), BadCertificateStore);  // certificate runs past BF21
  CHECK_THROWS_CODE(parse(from_hex("BF2105308102"
                                   "0101")),
                    BadCertificateStore);  // 81 with a short length
  CHECK_THROWS_CODE(parse(from_hex("BF2181053003020101")),
                    BadCertificateStore);                                   // 81 05: not the shortest form
  CHECK_THROWS_CODE(parse(from_hex("BF2180")), BadCertificateStore);        // indefinite length
  CHECK_THROWS_CODE(parse(from_hex("BF2183000005")), BadCertificateStore);  // 83: longer than keyline reads
  CHECK_THROWS_CODE(parse(from_hex("BF2100")), BadCertificateStore);        // no certificate
  CHECK_THROWS_CODE(parse(from_hex("BF21053103020101")), BadCertificateStore);  // SET, not SEQUENCE
  CHECK_THROWS_CODE(parse(from_hex("BF21")), BadCertificateStore);
  CHECK_THROWS_CODE(parse(Bytes{}), BadCertificateStore);
  std::vector<Bytes> eight(8, cert), nine(9, cert);
  CHECK(parse(scp11::encode_certificate_store(eight)).size() == 8);
  Bytes nine_store = from_hex("BF212D");
  for (const auto& c : nine) nine_store.insert(nine_store.end(), c.begin(), c.end());
  CHECK_THROWS_CODE(parse(nine_store), BadCertificateStore);
  CHECK_THROWS_CODE(scp11::encode_certificate_store(nine), BadCertificateStore);
  CHECK_THROWS_CODE(scp11::encode_certificate_store({from_hex("300302")}), BadCertificateStore);
}

// --- round trip and attacks ------------------------------------------------------------------------

struct EcKey {
  SecureBytes scalar;
  Bytes point;
};
EcKey fresh_key() {
  Botan::System_RNG rng;
  const Botan::ECDH_PrivateKey key(rng, Botan::EC_Group("secp256r1"));
  EcKey k{SecureBytes(32), key.public_value()};
  key.private_value().binary_encode(k.scalar.data(), 32);
  return k;
}

// keyline's card side in a test: PSO answered 9000, MUTUAL AUTHENTICATE by card_handshake, then every
// command unwrapped and answered by `serve` (wrapped), 6982 and the session gone at the first error.
class CardChannel final : public DeviceChannel {
 public:
  CardChannel(EcKey sd, Bytes oce_point) : m_sd(std::move(sd)), m_oce_point(std::move(oce_point)) {}
  std::function<void(Bytes&)> tamper_answer;  // applied to the MUTUAL AUTHENTICATE answer
  std::function<ResponseApdu(const CommandApdu&)> serve = [](const CommandApdu& c) {
    ResponseApdu r;  // echoes the data reversed
    r.data.assign(c.data.rbegin(), c.data.rend());
    return r;
  };
  std::vector<CommandApdu> received;  // the plain commands the card accepted

  void connect() override {}
  void close() noexcept override { m_closed = true; }
  bool connected() const noexcept override { return !m_closed; }
  // The exchange as a real link runs it (core::transceive: Ne held by check_answer, 61XX fetched
  // with plain GET RESPONSE) over the card's encoded APDUs.
  ResponseApdu transmit(const CommandApdu& c, std::size_t max_response) override {
    auto card = [this](const SecureBytes& raw) { return encode_response(process(decode_command(raw))); };
    return transceive(card, c, 255, max_response);
  }
  bool extended_length() const noexcept override { return false; }
  void disable_extended_length() noexcept override {}
  const std::string& address() const noexcept override { return m_address; }
  const Bytes& atr() const noexcept override { return m_atr; }

 private:
  // One APDU: GET RESPONSE serves the rest of the wrapped answer (below the channel,
  // docs/channel.md); everything else is answered whole and served in pieces of 256.
  ResponseApdu process(const CommandApdu& c) {
    if (c.cla == 0x00 && c.ins == 0xC0) return m_chainer.next(c.le.value_or(256));
    return m_chainer.start(secured(c), 256);
  }
  ResponseApdu secured(const CommandApdu& c) {
    if (c.ins == 0x2A) return ResponseApdu{};
    if (c.ins == 0x82 && !m_session) return mutual_authenticate(c);
    if (!m_session) return ResponseApdu{{}, sw::security_not_satisfied};
    try {
      const CommandApdu plain = m_session->unwrap_command(c);
      received.push_back(plain);
      return m_session->wrap_response(answer(plain));
    } catch (const scp::SecureChannelError&) {
      m_session.reset();
      return ResponseApdu{{}, sw::security_not_satisfied};
    }
  }
  ResponseApdu mutual_authenticate(const CommandApdu& c) {
    const auto request = scp11::parse_mutual_authenticate(c);
    auto hs = scp11::card_handshake(request, plain(c.data), m_sd.scalar, m_oce_point);
    if (tamper_answer) tamper_answer(hs.answer_data);
    m_session.emplace(std::move(hs.session));
    return ResponseApdu{secure(hs.answer_data), sw::ok};
  }
  // Command chaining (ISO 7816-4 section 5.4.1) under the channel: parts gathered, the whole served.
  ResponseApdu answer(const CommandApdu& part) {
    m_chained.insert(m_chained.end(), part.data.begin(), part.data.end());
    if (part.chained()) return ResponseApdu{};
    CommandApdu whole = part;
    whole.data = std::move(m_chained);
    m_chained.clear();
    return serve(whole);
  }

  EcKey m_sd;
  Bytes m_oce_point;
  std::optional<scp::SecureMessaging> m_session;
  SecureBytes m_chained;
  ResponseChainer m_chainer;
  bool m_closed = false;
  std::string m_address = "card";
  Bytes m_atr;
};

struct Parties {
  EcKey sd = fresh_key(), oce = fresh_key();
  CardChannel card{sd, oce.point};
  scp11::HostParams params() const {
    scp11::HostParams p;
    p.oce_chain = {from_hex("3003020101")};
    const SecureBytes sk = oce.scalar;
    p.static_ecdh = [sk](const Bytes& point) { return scp11::ecdh_p256(sk, point); };
    return p;
  }
};

CommandApdu command_with(std::size_t n, std::uint8_t ins = 0xE2) {
  CommandApdu c;
  c.cla = 0x80;
  c.ins = ins;
  for (std::size_t i = 0; i < n; ++i) c.data.push_back(static_cast<std::uint8_t>(i * 7 + 1));
  return c;
}

TEST_CASE("host and card: SCP11a handshake and commands of every size through SecureChannel") {
  Parties p;
  scp11::SecureChannel channel(p.card, scp11::open_host_session(p.card, p.params(), p.sd.point));
  for (std::size_t n : {0, 1, 15, 16, 17, 222, 223, 224, 255, 256, 600, 1000}) {
    INFO("data of " << n);
    const CommandApdu c = command_with(n);
    const ResponseApdu r = channel.transmit(c);
    CHECK(r.sw == sw::ok);
    CHECK(Bytes(r.data.begin(), r.data.end()) == Bytes(c.data.rbegin(), c.data.rend()));
  }
  for (const auto& part : p.card.received) CHECK(part.data.size() <= scp11::kMaxPlainPiece);
  CHECK(channel.connected());
}

TEST_CASE("host refuses a wrong receipt") {
  Parties p;
  p.card.tamper_answer = [](Bytes& answer) { answer.back() ^= 0x01; };
  CHECK_THROWS_CODE(scp11::open_host_session(p.card, p.params(), p.sd.point), SecureChannel);
}

TEST_CASE("host refuses a card that is not the SD key's holder") {
  Parties p;
  // The station expects another chip's SD key: ShSss differs, so does the receipt.
  CHECK_THROWS_CODE(scp11::open_host_session(p.card, p.params(), fresh_key().point), SecureChannel);
}

TEST_CASE("a station without the certified SK.OCE gets no session: the receipt does not match") {
  Parties p;
  scp11::HostParams params = p.params();
  const SecureBytes other = fresh_key().scalar;
  params.static_ecdh = [other](const Bytes& point) { return scp11::ecdh_p256(other, point); };
  CHECK_THROWS_CODE(scp11::open_host_session(p.card, params, p.sd.point), SecureChannel);
}

TEST_CASE("host: a refused handshake step is a SecureChannelError naming the status word") {
  ReplayChannel card;
  card.expect(from_hex("802A011005300302010100"), from_hex("6982"));
  Parties p;
  scp11::HostParams params = p.params();
  params.oce = {0x10, 0x01};
  CHECK_THROWS_CODE(scp11::open_host_session(card, params, p.sd.point), SecureChannel);
}

// A session pair with the same fresh keys, as after a handshake.
std::pair<scp::SecureMessaging, scp::SecureMessaging> session_pair(std::size_t mac_len = 8) {
  Parties p;
  const auto request = scp11::parse_mutual_authenticate(scp11::mutual_authenticate_command({}, p.oce.point));
  const Bytes command_data = plain(scp11::mutual_authenticate_command({}, p.oce.point).data);
  auto hs = scp11::card_handshake(request, command_data, p.sd.scalar, p.oce.point, mac_len);
  // The host's keys from the same secrets (the test knows both ephemeral halves only via the card's
  // answer, so it takes the card's session for both sides).
  return {hs.session, hs.session};
}

TEST_CASE("card refuses every single-byte change of a wrapped command, and is dead after it") {
  for (std::size_t mac_len : {8, 16}) {
    auto [host, card] = session_pair(mac_len);
    const Bytes wrapped = encoded(host.wrap_command(command_with(40)));
    std::size_t refused = 0;
    for (std::size_t i = 0; i < wrapped.size(); ++i) {
      for (std::uint8_t flip : {0x01, 0x80}) {
        Bytes bad = wrapped;
        bad[i] ^= flip;
        scp::SecureMessaging copy = card;
        try {
          copy.unwrap_command(decode_command(bad));
          FAIL("accepted a change at byte " << i);
        } catch (const scp::SecureChannelError&) {
          ++refused;
          CHECK_THROWS_CODE(copy.unwrap_command(decode_command(wrapped)), SecureChannel);
        } catch (const FormatError& e) {
          CHECK(e.code() == ErrorCode::BadApdu);  // a changed Lc no longer frames an APDU
          ++refused;
        }
      }
    }
    CHECK(refused == 2 * wrapped.size());
    CHECK(encoded(card.unwrap_command(decode_command(wrapped))) == encoded(command_with(40)));
  }
}

TEST_CASE("card refuses a replayed command") {
  auto [host, card] = session_pair();
  const CommandApdu first = host.wrap_command(command_with(20));
  card.unwrap_command(first);
  host.unwrap_response(card.wrap_response(ResponseApdu{}));
  const CommandApdu second = host.wrap_command(command_with(20));
  scp::SecureMessaging before_second = card;
  CHECK_THROWS_CODE(card.unwrap_command(first), SecureChannel);   // the earlier command again
  CHECK_THROWS_CODE(card.unwrap_command(second), SecureChannel);  // dead after it
  before_second.unwrap_command(second);
  before_second.wrap_response(ResponseApdu{});
  CHECK_THROWS_CODE(before_second.unwrap_command(second), SecureChannel);  // the same command twice
}

TEST_CASE("host refuses a changed R-MAC or answer, and is dead after it") {
  auto [host, card] = session_pair();
  card.unwrap_command(host.wrap_command(command_with(5)));
  ResponseApdu answer;
  answer.data = SecureBytes(30, 0x42);
  const ResponseApdu wrapped = card.wrap_response(answer);
  for (std::size_t i = 0; i < wrapped.data.size(); ++i) {
    scp::SecureMessaging copy = host;
    ResponseApdu bad = wrapped;
    bad.data[i] ^= 0x01;
    CHECK_THROWS_CODE(copy.unwrap_response(bad), SecureChannel);
    CHECK_THROWS_CODE(copy.wrap_command(command_with(1)), SecureChannel);
  }
  scp::SecureMessaging copy = host;
  ResponseApdu other_sw = wrapped;
  other_sw.sw = 0x6A80;
  CHECK_THROWS_CODE(copy.unwrap_response(other_sw), SecureChannel);
  CHECK(host.unwrap_response(wrapped).data == answer.data);
}

// AES-CBC and CMAC done here by hand, so that a message can carry a right MAC over bad padding.
SecureBytes cbc_encrypt(const SecureBytes& key, SecureBytes icv_block, const SecureBytes& data) {
  auto aes = Botan::BlockCipher::create_or_throw("AES-128");
  aes->set_key(key);
  aes->encrypt(icv_block.data());
  auto mode = Botan::Cipher_Mode::create_or_throw("AES-128/CBC/NoPadding", Botan::ENCRYPTION);
  mode->set_key(key);
  mode->start(icv_block);
  SecureBytes out = data;
  mode->finish(out);
  return out;
}
SecureBytes cmac(const SecureBytes& key, const SecureBytes& data) {
  auto mac = Botan::MessageAuthenticationCode::create_or_throw("CMAC(AES-128)");
  mac->set_key(key);
  mac->update(data);
  return mac->final();
}

TEST_CASE("bad padding under a right MAC is refused on both sides") {
  scp::SessionKeys keys{SecureBytes(16, 1), SecureBytes(16, 2), SecureBytes(16, 3), SecureBytes(16, 4)};
  const Bytes chain(16, 0x55);
  const SecureBytes no_padding(16, 0x11);  // a whole block that does not end in 80 00..
  SecureBytes counter1(16, 0);
  counter1[15] = 1;

  scp::SecureMessaging card(keys, chain, 8);
  CommandApdu c;
  c.cla = 0x84;
  c.ins = 0xE2;
  c.data = cbc_encrypt(keys.enc, counter1, no_padding);
  SecureBytes mac_input(chain.begin(), chain.end());
  mac_input.insert(mac_input.end(), {c.cla, c.ins, c.p1, c.p2, 16 + 8});
  mac_input.insert(mac_input.end(), c.data.begin(), c.data.end());
  const SecureBytes c_mac = cmac(keys.mac, mac_input);
  c.data.insert(c.data.end(), c_mac.begin(), c_mac.begin() + 8);
  CHECK_THROWS_CODE(card.unwrap_command(c), SecureChannel);

  scp::SecureMessaging host(keys, chain, 8);
  const CommandApdu sent = host.wrap_command(command_with(3));
  SecureBytes host_chain(chain.begin(), chain.end());  // the full C-MAC of `sent`, recomputed
  host_chain.insert(host_chain.end(),
                    {sent.cla, sent.ins, sent.p1, sent.p2, static_cast<std::uint8_t>(sent.data.size())});
  host_chain.insert(host_chain.end(), sent.data.begin(), sent.data.end() - 8);
  SecureBytes r_icv = counter1;
  r_icv[0] = 0x80;
  ResponseApdu r;
  r.data = cbc_encrypt(keys.enc, r_icv, no_padding);
  SecureBytes r_input = cmac(keys.mac, host_chain);
  r_input.insert(r_input.end(), r.data.begin(), r.data.end());
  r_input.insert(r_input.end(), {0x90, 0x00});
  const SecureBytes r_mac = cmac(keys.rmac, r_input);
  r.data.insert(r.data.end(), r_mac.begin(), r_mac.begin() + 8);
  CHECK_THROWS_CODE(host.unwrap_response(r), SecureChannel);
}

TEST_CASE("an error answer without data carries no R-MAC (Amendment D section 6.2.5)") {
  auto [host, card] = session_pair();
  card.unwrap_command(host.wrap_command(command_with(2)));
  const ResponseApdu refusal = card.wrap_response(ResponseApdu{{}, sw::conditions_not_satisfied});
  CHECK(refusal.data.empty());
  CHECK(host.unwrap_response(refusal).sw == sw::conditions_not_satisfied);
  // A 9000 without data does carry one, so an attacker cannot turn a refusal into a success.
  card.unwrap_command(host.wrap_command(command_with(2)));
  CHECK_THROWS_CODE(host.unwrap_response(ResponseApdu{}), SecureChannel);
}

TEST_CASE("ECDH refuses points off the curve and the point at infinity") {
  const EcKey k = fresh_key();
  const EcKey peer = fresh_key();
  CHECK(scp11::ecdh_p256(k.scalar, peer.point) == scp11::ecdh_p256(peer.scalar, k.point));
  Bytes off = peer.point;
  off.back() ^= 0x01;  // y + 1: not on the curve
  CHECK_THROWS_CODE(scp11::ecdh_p256(k.scalar, off), Crypto);
  CHECK_THROWS_CODE(scp11::ecdh_p256(k.scalar, Bytes{0x00}), Crypto);
  Bytes zero(65, 0);
  zero[0] = 0x04;
  CHECK_THROWS_CODE(scp11::ecdh_p256(k.scalar, zero), Crypto);
  Bytes compressed(peer.point.begin(), peer.point.begin() + 33);
  compressed[0] = 0x02;
  CHECK_THROWS_CODE(scp11::ecdh_p256(k.scalar, compressed), Crypto);
  CHECK_THROWS_CODE(scp11::ecdh_p256(SecureBytes(32, 0), peer.point), Crypto);
  CHECK_THROWS_CODE(scp11::ecdh_p256(SecureBytes(32, 0xFF), peer.point), Crypto);  // >= n

  // The card meets an off-curve ePK.OCE in MUTUAL AUTHENTICATE.
  const CommandApdu ma = scp11::mutual_authenticate_command({}, off);
  const auto request = scp11::parse_mutual_authenticate(ma);
  CHECK_THROWS_CODE(scp11::card_handshake(request, plain(ma.data), k.scalar, peer.point), Crypto);
}

TEST_CASE("MUTUAL AUTHENTICATE parsers are strict") {
  const EcKey k = fresh_key();
  const CommandApdu good = scp11::mutual_authenticate_command({0x11, 0x01}, k.point);
  CHECK(to_hex(head(encoded(good), 20)) == "8082011153A60D9002110195013C800188810110");
  for (std::size_t i = 0; i < 18; ++i) {
    CommandApdu bad = good;
    bad.data[i] ^= 0x01;
    CHECK_THROWS_CODE(scp11::parse_mutual_authenticate(bad), BadApdu);
  }
  CommandApdu longer = good;
  longer.data.push_back(0);
  CHECK_THROWS_CODE(scp11::parse_mutual_authenticate(longer), BadApdu);
  CommandApdu secured = good;
  secured.cla = 0x84;
  CHECK_THROWS_CODE(scp11::parse_mutual_authenticate(secured), BadApdu);
  const Bytes answer = scp11::encode_mutual_authenticate_answer({k.point, Bytes(16, 7)});
  for (std::size_t i : {0, 1, 2, 3, 68, 69}) {
    Bytes bad = answer;
    bad[i] ^= 0x01;
    CHECK_THROWS_CODE(scp11::parse_mutual_authenticate_answer(bad.data(), bad.size()), BadApdu);
  }
  CHECK_THROWS_CODE(scp11::parse_mutual_authenticate_answer(answer.data(), answer.size() - 1), BadApdu);
}

TEST_CASE("SecureChannel closes the link at the first bad answer and stays closed") {
  Parties p;
  scp11::SecureChannel channel(p.card, scp11::open_host_session(p.card, p.params(), p.sd.point));
  p.card.serve = [](const CommandApdu&) { return ResponseApdu{}; };
  CHECK(channel.transmit(command_with(3)).sw == sw::ok);
  // A wrapped command the card refuses comes back as a bare 6982 (no R-MAC): passed up as it is.
  // A 9000 without its R-MAC is refused, and everything after it.
  ReplayChannel forged;
  const scp::SecureMessaging s = session_pair().first;
  scp::SecureMessaging copy = s;
  CommandApdu sent = copy.wrap_command(command_with(1));
  sent.le = 256;
  forged.expect(encoded(sent), from_hex("9000"));
  scp11::SecureChannel over_forged(forged, s);
  CHECK_THROWS_CODE(over_forged.transmit(command_with(1)), SecureChannel);
  CHECK_FALSE(over_forged.connected());
  CHECK_FALSE(forged.connected());  // the inner link is closed too
  CHECK_THROWS_CODE(over_forged.transmit(command_with(1)), SecureChannel);
}

TEST_CASE("kMaxPlainPiece fits a short APDU in S8 and S16, one byte more does not in S16") {
  for (std::size_t mac_len : {8, 16}) {
    scp::SecureMessaging host = session_pair(mac_len).first;
    CHECK(host.wrap_command(command_with(scp11::kMaxPlainPiece)).data.size() == 224 + mac_len);
  }
  scp::SecureMessaging s16 = session_pair(16).first;
  CHECK_THROWS_CODE(s16.wrap_command(command_with(scp11::kMaxPlainPiece + 1)), SecureChannel);
  CHECK_THROWS_CODE(s16.wrap_command(command_with(1)), SecureChannel);  // dead after it
}

}  // namespace
