// SCP03 handshake (core/scp03_session.h, docs/service.md): the INITIALIZE UPDATE answer and the
// EXTERNAL AUTHENTICATE of tests/vectors/globalplatform/scp03_aes128_s16.txt byte for byte through the
// StaticCmac path, derivation version 2 against tests/vectors/service/derivation_v2.txt (openssl), then
// card <-> host with the attacks the card must refuse: a wrong host cryptogram, another security
// level, a replayed EXTERNAL AUTHENTICATE, a PUT KEY under the wrong key.
#include "keyline/core/scp03_session.h"

#include <botan/block_cipher.h>
#include <doctest/doctest.h>

#include <map>
#include <string>

#include "keyline/core/apdu.h"
#include "keyline/core/data_package.h"
#include "keyline/core/dgi.h"
#include "vector_file.h"

using namespace keyline::core;
using namespace keyline::core::scp;

namespace {

std::map<std::string, Bytes> load(const std::string& name) {
  std::map<std::string, Bytes> out;
  for (const auto& row : keyline::test::read_vectors(name).rows) {
    REQUIRE(row.size() == 3);
    out[row[0]] = from_hex(row[2]);
  }
  return out;
}
SecureBytes secure(const Bytes& b) { return SecureBytes(b.begin(), b.end()); }
Bytes plain(const SecureBytes& b) { return Bytes(b.begin(), b.end()); }
Bytes head(const Bytes& b, std::size_t n) {
  return Bytes(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n));
}

const ChipId kChip = ChipId::parse("4090612312345678ABCD");
const Bytes kAid = from_hex("F04B45594C494E4501");

Scp03StaticKeys fresh_keys(std::uint8_t seed) {
  SecureBytes comm(32);
  for (std::size_t i = 0; i < comm.size(); ++i) comm[i] = static_cast<std::uint8_t>(seed + i);
  return static_keys_from_comm(comm);
}

CommandApdu status_command() {
  CommandApdu c;
  c.cla = 0x80;
  c.ins = 0xF2;
  c.p1 = 0x80;
  c.data = {0x4F, 0x00};
  return c;
}

}  // namespace

TEST_CASE("INITIALIZE UPDATE answer of the S16 transcript parses to its fields and encodes back") {
  auto t = load("globalplatform/scp03_aes128_s16.txt");
  const Bytes rapdu = t["initialize_update.rapdu"];
  const auto a = parse_initialize_update_answer(rapdu.data(), rapdu.size() - 2);
  CHECK(a.kdd == t["initialize_update.rapdu.key_diversification_data"]);
  CHECK(a.kvn == 0x30);
  CHECK(a.scp == 0x03);
  CHECK(a.i == 0x71);
  CHECK(a.card_challenge == t["initialize_update.rapdu.card_challenge"]);
  CHECK(a.card_cryptogram == t["initialize_update.rapdu.card_cryptogram"]);
  CHECK(a.sequence_counter == t["initialize_update.rapdu.sequence_counter"]);
  CHECK(encode_initialize_update_answer(a) == head(rapdu, rapdu.size() - 2));
  CHECK(plain(encode_command(initialize_update_command(0x30, t["host_challenge"]))) ==
        t["initialize_update.capdu"]);
  CHECK_THROWS_CODE(parse_initialize_update_answer(rapdu.data(), rapdu.size() - 3), BadApdu);
  Bytes scp02 = head(rapdu, rapdu.size() - 2);
  scp02[11] = 0x02;
  CHECK_THROWS_CODE(parse_initialize_update_answer(scp02.data(), scp02.size()), BadApdu);
}

TEST_CASE("host_authenticate through StaticCmac gives the transcript's EXTERNAL AUTHENTICATE byte for byte") {
  auto t = load("globalplatform/scp03_aes128_s16.txt");
  const Scp03StaticKeys statics{secure(t["static.enc"]), secure(t["static.mac"]), secure(t["static.dek"])};
  const Bytes rapdu = t["initialize_update.rapdu"];
  const auto a = parse_initialize_update_answer(rapdu.data(), rapdu.size() - 2);
  const auto keys = derive_scp03_session(software_cmac(statics), 16, t["host_challenge"], a.card_challenge);
  const auto soft = derive_scp03_session(statics, t["host_challenge"], a.card_challenge);
  CHECK(plain(keys.enc) == t["derived.s_enc"]);
  CHECK(plain(keys.mac) == t["derived.s_mac"]);
  CHECK(plain(keys.rmac) == t["derived.s_rmac"]);
  CHECK(keys.enc == soft.enc);
  CHECK(keys.mac == soft.mac);
  CHECK(keys.rmac == soft.rmac);
  CHECK(keys.dek == scp03_kdf(statics.dek, kdf_constant_s_dek, t["derived.context"], 128));
  auto host = host_authenticate(keys, t["host_challenge"], a, 16);
  CHECK(plain(encode_command(host.external_authenticate)) == t["external_authenticate.capdu"]);
  // The session goes on as the transcript's: its first wrapped GET STATUS byte for byte.
  CommandApdu gs = decode_command(t["get_status_packages.plain_capdu"]);
  gs.le.reset();
  CHECK(plain(encode_command(host.session.wrap_command(gs))) == t["get_status_packages.capdu"]);

  auto forged = a;
  forged.card_cryptogram[0] ^= 0x01;
  CHECK_THROWS_CODE(host_authenticate(keys, t["host_challenge"], forged, 16), SecureChannel);
  auto weak = a;
  weak.i = 0x11;  // no R-MAC, no R-ENC
  CHECK_THROWS_CODE(host_authenticate(keys, t["host_challenge"], weak, 16), SecureChannel);
}

TEST_CASE("derivation v2: comm and the three static keys equal the openssl known answers") {
  auto v = load("service/derivation_v2.txt");
  const ChipId chip = ChipId::from_bytes(v["chip_id"].data(), v["chip_id"].size());
  CHECK(comm_derivation_data_v2(chip) == v["derivation_data"]);
  auto aes = Botan::BlockCipher::create_or_throw("AES-256");
  aes->set_key(v["master"]);
  SecureBytes comm = secure(comm_derivation_data_v2(chip));
  aes->encrypt_n(comm.data(), comm.data(), 2);
  CHECK(plain(comm) == v["comm"]);
  CHECK(static_key_diversifier(StaticKey::Enc) == v["diversifier.enc"]);
  CHECK(static_key_diversifier(StaticKey::Mac) == v["diversifier.mac"]);
  CHECK(static_key_diversifier(StaticKey::Dek) == v["diversifier.dek"]);
  const auto k = static_keys_from_comm(comm);
  CHECK(plain(k.enc) == v["static.enc"]);
  CHECK(plain(k.mac) == v["static.mac"]);
  CHECK(plain(k.dek) == v["static.dek"]);
  CHECK_THROWS_CODE(static_keys_from_comm(SecureBytes(16)), Crypto);
}

TEST_CASE("card <-> host round trip at level 33 in S16 and the card challenge follows the sequence counter") {
  const auto statics = fresh_keys(7);
  const Bytes host_challenge(16, 0xA5);
  const auto card = card_initialize(statics, 2, kChip, host_challenge, 41, kAid, 16);
  const Bytes wire = encode_initialize_update_answer(card.answer);
  REQUIRE(wire.size() == 48);
  const auto answer = parse_initialize_update_answer(wire.data(), wire.size());
  CHECK(answer.kvn == 2);
  CHECK(answer.i == 0x71);
  CHECK(answer.kdd == Bytes(kChip.bytes().begin(), kChip.bytes().end()));
  CHECK(answer.sequence_counter == from_hex("000029"));
  const auto keys = derive_scp03_session(software_cmac(statics), 16, host_challenge, answer.card_challenge);
  auto host = host_authenticate(keys, host_challenge, answer, 16);
  auto session = card_authenticate(card, host_challenge, host.external_authenticate, 16);
  CHECK(session.dek() == host.session.dek());

  const auto on_card = session.unwrap_command(host.session.wrap_command(status_command()));
  CHECK(plain(on_card.data) == Bytes{0x4F, 0x00});
  ResponseApdu r;
  r.data = {0x01, 0x02, 0x03};
  CHECK(plain(host.session.unwrap_response(session.wrap_response(r)).data) == Bytes{0x01, 0x02, 0x03});

  const auto next = card_initialize(statics, 2, kChip, host_challenge, 42, kAid, 16);
  CHECK(next.answer.card_challenge != card.answer.card_challenge);
}

TEST_CASE(
    "the card refuses a wrong host cryptogram, another level, another key and a replayed EXTERNAL "
    "AUTHENTICATE") {
  const auto statics = fresh_keys(9);
  const Bytes host_challenge(16, 0x3C);
  const auto card = card_initialize(statics, 1, kChip, host_challenge, 100, kAid, 16);
  const auto keys =
      derive_scp03_session(software_cmac(statics), 16, host_challenge, card.answer.card_challenge);
  const auto good = host_authenticate(keys, host_challenge, card.answer, 16).external_authenticate;

  SUBCASE("a correct C-MAC over a wrong host cryptogram") {
    SecureMessaging mac(keys, Bytes(16, 0x00), 16);
    CommandApdu p;
    p.cla = 0x80;
    p.ins = kInsExternalAuthenticate;
    p.p1 = kFullLevel;
    p.data = SecureBytes(16, 0x11);
    CHECK_THROWS_CODE(card_authenticate(card, host_challenge, mac.mac_command(p), 16), SecureChannel);
  }
  SUBCASE("security level 13 (no R-ENC), correctly MACed") {
    SecureMessaging mac(keys, Bytes(16, 0x00), 16);
    CommandApdu p;
    p.cla = 0x80;
    p.ins = kInsExternalAuthenticate;
    p.p1 = 0x13;
    const Bytes host = scp03_cryptogram(keys.mac, kdf_constant::host_cryptogram, host_challenge,
                                        card.answer.card_challenge, 16);
    p.data = secure(host);
    CHECK_THROWS_CODE(card_authenticate(card, host_challenge, mac.mac_command(p), 16), SecureChannel);
  }
  SUBCASE("one flipped bit of the C-MAC") {
    auto bad = good;
    bad.data.back() ^= 0x01;
    CHECK_THROWS_CODE(card_authenticate(card, host_challenge, bad, 16), SecureChannel);
  }
  SUBCASE("a host with other static keys fails the card cryptogram") {
    const auto other =
        derive_scp03_session(software_cmac(fresh_keys(10)), 16, host_challenge, card.answer.card_challenge);
    CHECK_THROWS_CODE(host_authenticate(other, host_challenge, card.answer, 16), SecureChannel);
  }
  SUBCASE("replay: the recorded EXTERNAL AUTHENTICATE against the next session (counter 101)") {
    CHECK_NOTHROW(card_authenticate(card, host_challenge, good, 16));
    const auto next = card_initialize(statics, 1, kChip, host_challenge, 101, kAid, 16);
    CHECK_THROWS_CODE(card_authenticate(next, host_challenge, good, 16), SecureChannel);
  }
}

TEST_CASE("PUT KEY of a new communication key: round trip, wrong S-DEK or changed KCV refused") {
  const SecureBytes dek(16, 0x42);
  SecureBytes comm(32);
  for (std::size_t i = 0; i < comm.size(); ++i) comm[i] = static_cast<std::uint8_t>(0xC0 ^ i);
  const auto cmd = put_comm_key_command(dek, 1, 2, comm);
  CHECK(cmd.ins == 0xD8);
  CHECK(cmd.p1 == 1);
  CHECK(plain(cmd.data).size() == 39);
  CHECK(plain(SecureBytes(cmd.data.begin() + 3, cmd.data.begin() + 35)) != plain(comm));
  const auto got = parse_put_comm_key(dek, cmd);
  CHECK(got.new_kvn == 2);
  CHECK(got.comm == comm);
  CHECK_THROWS_CODE(parse_put_comm_key(SecureBytes(16, 0x43), cmd), BadApdu);
  auto changed = cmd;
  changed.data.back() ^= 0x01;
  CHECK_THROWS_CODE(parse_put_comm_key(dek, changed), BadApdu);
}

TEST_CASE(
    "data package header: master version 1 is the absent byte, 2 one more byte, an explicit 01 refused") {
  DataPackage p;
  p.imei = Imei::parse("357805023984942");
  p.station_id = "line-1";
  p.issued_at = 1795000000;
  p.identity_cert = Bytes(40, 0x30);
  p.transport_cert = Bytes(30, 0x31);
  p.ca_chain = {Bytes(50, 0x32)};
  p.identity_key = SecureBytes(138, 0x41);
  p.transport_key = SecureBytes(32, 0x42);
  p.comm_key = SecureBytes(32, 0x43);
  const SecureBytes v1 = p.encode();
  CHECK(DataPackage::decode(v1).master_version == 1);
  const auto header_of = [](const SecureBytes& pkg) {
    for (const auto& d : decode_dgis(pkg))
      if (d.tag == dgi_tag::header) return plain(d.value);
    return Bytes{};
  };
  const Bytes h1 = header_of(v1);
  CHECK(h1.size() == 1 + 15 + 1 + 6 + 8);
  p.master_version = 2;
  const SecureBytes v2 = p.encode();
  const Bytes h2 = header_of(v2);
  REQUIRE(h2.size() == h1.size() + 1);
  CHECK(h2.back() == 0x02);
  CHECK(DataPackage::decode(v2).master_version == 2);
  // The same header with an explicit 01 would give one package two encodings: refused.
  std::vector<Dgi> dgis = decode_dgis(v2);
  for (auto& d : dgis)
    if (d.tag == dgi_tag::header) d.value.back() = 0x01;
  CHECK_THROWS_CODE(DataPackage::decode(encode_dgis(dgis)), BadDataPackage);
}
