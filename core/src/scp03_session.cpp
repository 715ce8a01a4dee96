#include "keyline/core/scp03_session.h"

#include <botan/block_cipher.h>
#include <botan/cipher_mode.h>
#include <botan/hash.h>
#include <botan/mac.h>
#include <botan/mem_ops.h>

#include <string>

#include "keyline/core/data_package.h"
#include "keyline/core/error.h"

namespace keyline::core::scp {
namespace {

constexpr std::size_t kKddLen = 10;
constexpr std::size_t kCounterLen = 3;
constexpr std::uint8_t kScp03 = 0x03;
// "i" of Amendment D section 5.1: 40 R-MAC, 20 R-ENC, 10 pseudo-random card challenge, 01 S16.
constexpr std::uint8_t kIRmacRenc = 0x60;
constexpr std::uint8_t kIPseudoRandom = 0x10;
constexpr std::uint8_t kIS16 = 0x01;
constexpr std::size_t kCommLen = 32;

[[noreturn]] void bad_apdu(const std::string& why) { throw FormatError(ErrorCode::BadApdu, "SCP03: " + why); }
[[noreturn]] void channel_fail(const std::string& why) {
  throw SecureChannelError(ErrorCode::SecureChannel, "secure channel: " + why);
}
void check_mac_len(std::size_t mac_len) {
  if (mac_len != 8 && mac_len != 16) throw CryptoError(ErrorCode::Crypto, "SCP03: the MAC length is 8 or 16");
}

Bytes concat(const Bytes& a, const Bytes& b) {
  Bytes out = a;
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

// Amendment D section 4.1.5 with the PRF behind `cmac`: the same input scp03_kdf builds.
SecureBytes kdf(const StaticCmac& cmac, StaticKey which, std::uint8_t constant, const Bytes& context,
                std::size_t bits) {
  SecureBytes out;
  for (std::uint8_t i = 1; out.size() * 8 < bits; ++i) {
    Bytes input(11, 0x00);
    input.insert(input.end(),
                 {constant, 0x00, static_cast<std::uint8_t>(bits >> 8), static_cast<std::uint8_t>(bits), i});
    input.insert(input.end(), context.begin(), context.end());
    const Bytes block = cmac(which, input);
    if (block.size() != 16) throw CryptoError(ErrorCode::Crypto, "SCP03: a CMAC is 16 bytes");
    out.insert(out.end(), block.begin(), block.end());
  }
  out.resize(bits / 8);
  return out;
}

SecureBytes aes_ecb(const SecureBytes& key, const Bytes& block) {
  auto aes = Botan::BlockCipher::create_or_throw(key.size() == 32 ? "AES-256" : "AES-128");
  aes->set_key(key);
  SecureBytes out(block.begin(), block.end());
  aes->encrypt_n(out.data(), out.data(), out.size() / 16);
  return out;
}

SecureBytes aes_cbc_zero_icv(const SecureBytes& key, const SecureBytes& data, Botan::Cipher_Dir dir) {
  auto mode = Botan::Cipher_Mode::create_or_throw(
      std::string(key.size() == 32 ? "AES-256" : "AES-128") + "/CBC/NoPadding", dir);
  mode->set_key(key);
  mode->start(SecureBytes(16, 0x00));
  SecureBytes out = data;
  mode->finish(out);
  return out;
}

Bytes counter_bytes(std::uint32_t counter) {
  if (counter > 0xFFFFFF) channel_fail("the sequence counter has run out");
  return {static_cast<std::uint8_t>(counter >> 16), static_cast<std::uint8_t>(counter >> 8),
          static_cast<std::uint8_t>(counter)};
}

std::uint8_t i_for(std::size_t mac_len) {
  return static_cast<std::uint8_t>(kIRmacRenc | kIPseudoRandom | (mac_len == 16 ? kIS16 : 0));
}

}  // namespace

SessionKeys derive_scp03_session(const StaticCmac& cmac, std::size_t key_len, const Bytes& host_challenge,
                                 const Bytes& card_challenge) {
  if (key_len != 16 && key_len != 32)
    throw CryptoError(ErrorCode::Crypto, "SCP03: static keys are 16 or 32 bytes");
  if ((host_challenge.size() != 8 && host_challenge.size() != 16) ||
      card_challenge.size() != host_challenge.size())
    throw CryptoError(ErrorCode::Crypto, "SCP03: challenges are 8 (S8) or 16 (S16) bytes each");
  const Bytes context = concat(host_challenge, card_challenge);
  SessionKeys s;
  s.enc = kdf(cmac, StaticKey::Enc, kdf_constant::s_enc, context, 8 * key_len);
  s.mac = kdf(cmac, StaticKey::Mac, kdf_constant::s_mac, context, 8 * key_len);
  s.rmac = kdf(cmac, StaticKey::Mac, kdf_constant::s_rmac, context, 8 * key_len);
  s.dek = kdf(cmac, StaticKey::Dek, kdf_constant_s_dek, context, 8 * key_len);
  return s;
}

SecureBytes derive_session_dek(const StaticCmac& cmac, std::size_t key_len, const Bytes& host_challenge,
                               const Bytes& card_challenge) {
  return kdf(cmac, StaticKey::Dek, kdf_constant_s_dek, concat(host_challenge, card_challenge), 8 * key_len);
}

StaticCmac software_cmac(const Scp03StaticKeys& keys) {
  return [keys](StaticKey which, const Bytes& data) {
    const SecureBytes& key = which == StaticKey::Enc   ? keys.enc
                             : which == StaticKey::Mac ? keys.mac
                                                       : keys.dek;
    auto mac = Botan::MessageAuthenticationCode::create_or_throw(key.size() == 32 ? "CMAC(AES-256)"
                                                                                  : "CMAC(AES-128)");
    mac->set_key(key);
    const auto tag = mac->process(data);
    return Bytes(tag.begin(), tag.end());
  };
}

Bytes comm_derivation_data_v2(const ChipId& chip) {
  static const std::string label = "keyline/comm/v2";
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(label);
  h->update(chip.bytes().data(), chip.bytes().size());
  const auto d = h->final();
  return Bytes(d.begin(), d.end());
}

Bytes static_key_diversifier(StaticKey which) {
  // 16 ASCII bytes each: one AES block, so each static key is one AES-256-ECB block under comm.
  const std::string text = which == StaticKey::Enc   ? "keyline/scp03enc"
                           : which == StaticKey::Mac ? "keyline/scp03mac"
                                                     : "keyline/scp03dek";
  return Bytes(text.begin(), text.end());
}

Scp03StaticKeys static_keys_from_comm(const SecureBytes& comm) {
  if (comm.size() != kCommLen)
    throw CryptoError(ErrorCode::Crypto, "SCP03: the communication key is 32 bytes");
  return {aes_ecb(comm, static_key_diversifier(StaticKey::Enc)),
          aes_ecb(comm, static_key_diversifier(StaticKey::Mac)),
          aes_ecb(comm, static_key_diversifier(StaticKey::Dek))};
}

CommandApdu initialize_update_command(std::uint8_t kvn, const Bytes& host_challenge) {
  if (host_challenge.size() != 8 && host_challenge.size() != 16)
    bad_apdu("the host challenge is 8 or 16 bytes");
  CommandApdu c;
  c.cla = 0x80;
  c.ins = kInsInitializeUpdate;
  c.p1 = kvn;
  c.p2 = 0x00;
  c.data.assign(host_challenge.begin(), host_challenge.end());
  c.le = 256;
  return c;
}

InitializeUpdateAnswer parse_initialize_update_answer(const std::uint8_t* data, std::size_t len) {
  // Amendment D section 7.1.1.2: KDD (10) || KVN || SCP 03 || i || card challenge || card cryptogram
  // || sequence counter (3); the challenge and cryptogram are 16 bytes when "i" says S16.
  if (len < kKddLen + 3) bad_apdu("INITIALIZE UPDATE answer too short");
  InitializeUpdateAnswer a;
  a.kdd.assign(data, data + kKddLen);
  a.kvn = data[kKddLen];
  a.scp = data[kKddLen + 1];
  a.i = data[kKddLen + 2];
  if (a.scp != kScp03) bad_apdu("INITIALIZE UPDATE answer is not SCP03");
  const std::size_t n = (a.i & kIS16) ? 16 : 8;
  if (len != kKddLen + 3 + 2 * n + kCounterLen) bad_apdu("INITIALIZE UPDATE answer has the wrong length");
  const std::uint8_t* p = data + kKddLen + 3;
  a.card_challenge.assign(p, p + n);
  a.card_cryptogram.assign(p + n, p + 2 * n);
  a.sequence_counter.assign(p + 2 * n, p + 2 * n + kCounterLen);
  return a;
}

Bytes encode_initialize_update_answer(const InitializeUpdateAnswer& a) {
  const std::size_t n = (a.i & kIS16) ? 16 : 8;
  if (a.kdd.size() != kKddLen || a.card_challenge.size() != n || a.card_cryptogram.size() != n ||
      a.sequence_counter.size() != kCounterLen)
    bad_apdu("INITIALIZE UPDATE answer fields have the wrong sizes");
  Bytes out = a.kdd;
  out.insert(out.end(), {a.kvn, a.scp, a.i});
  out.insert(out.end(), a.card_challenge.begin(), a.card_challenge.end());
  out.insert(out.end(), a.card_cryptogram.begin(), a.card_cryptogram.end());
  out.insert(out.end(), a.sequence_counter.begin(), a.sequence_counter.end());
  return out;
}

HostAuthenticate host_authenticate(const SessionKeys& keys, const Bytes& host_challenge,
                                   const InitializeUpdateAnswer& answer, std::size_t mac_len) {
  check_mac_len(mac_len);
  // keyline runs at level 33 only: a card without R-MAC and R-ENC, or in the other mode, is refused.
  if ((answer.i & kIRmacRenc) != kIRmacRenc || ((answer.i & kIS16) != 0) != (mac_len == 16))
    channel_fail("the card's \"i\" parameter does not offer R-MAC, R-ENC and the agreed mode");
  if (answer.card_challenge.size() != mac_len || host_challenge.size() != mac_len)
    channel_fail("challenges do not fit the mode");
  const Bytes expected = scp03_cryptogram(keys.mac, kdf_constant::card_cryptogram, host_challenge,
                                          answer.card_challenge, mac_len);
  if (answer.card_cryptogram.size() != mac_len ||
      !Botan::constant_time_compare(expected.data(), answer.card_cryptogram.data(), mac_len))
    channel_fail("wrong card cryptogram");
  const Bytes host = scp03_cryptogram(keys.mac, kdf_constant::host_cryptogram, host_challenge,
                                      answer.card_challenge, mac_len);
  SecureMessaging session(keys, Bytes(16, 0x00), mac_len, kFullLevel);
  CommandApdu plain;
  plain.cla = 0x80;
  plain.ins = kInsExternalAuthenticate;
  plain.p1 = kFullLevel;
  plain.p2 = 0x00;
  plain.data.assign(host.begin(), host.end());
  CommandApdu ea = session.mac_command(plain);
  return {std::move(ea), std::move(session)};
}

CardInitialize card_initialize(const Scp03StaticKeys& keys, std::uint8_t kvn, const ChipId& kdd,
                               const Bytes& host_challenge, std::uint32_t sequence_counter, const Bytes& aid,
                               std::size_t mac_len) {
  check_mac_len(mac_len);
  if (host_challenge.size() != mac_len) bad_apdu("the host challenge does not fit the mode");
  CardInitialize out;
  auto& a = out.answer;
  a.kdd.assign(kdd.bytes().begin(), kdd.bytes().end());
  a.kvn = kvn;
  a.i = i_for(mac_len);
  a.sequence_counter = counter_bytes(sequence_counter);
  // Amendment D section 6.2.2.1: the pseudo-random card challenge over counter || invoking AID.
  const SecureBytes challenge =
      scp03_kdf(keys.enc, kdf_constant::card_challenge, concat(a.sequence_counter, aid), 8 * mac_len);
  a.card_challenge.assign(challenge.begin(), challenge.end());
  out.keys = derive_scp03_session(software_cmac(keys), keys.enc.size(), host_challenge, a.card_challenge);
  a.card_cryptogram = scp03_cryptogram(out.keys.mac, kdf_constant::card_cryptogram, host_challenge,
                                       a.card_challenge, mac_len);
  return out;
}

SecureMessaging card_authenticate(const CardInitialize& init, const Bytes& host_challenge,
                                  const CommandApdu& external_authenticate, std::size_t mac_len) {
  check_mac_len(mac_len);
  const auto& c = external_authenticate;
  if (c.cla != 0x84 || c.ins != kInsExternalAuthenticate || c.p2 != 0x00)
    channel_fail("not an EXTERNAL AUTHENTICATE with secure messaging");
  if (c.p1 != kFullLevel) channel_fail("security level other than 33 refused");
  SecureMessaging session(init.keys, Bytes(16, 0x00), mac_len, kFullLevel);
  const CommandApdu plain = session.unmac_command(c);
  const Bytes expected = scp03_cryptogram(init.keys.mac, kdf_constant::host_cryptogram, host_challenge,
                                          init.answer.card_challenge, mac_len);
  if (plain.data.size() != mac_len ||
      !Botan::constant_time_compare(expected.data(), plain.data.data(), mac_len))
    channel_fail("wrong host cryptogram");
  return session;
}

CommandApdu put_comm_key_command(const SecureBytes& s_dek, std::uint8_t current_kvn, std::uint8_t new_kvn,
                                 const SecureBytes& new_comm) {
  if (new_comm.size() != kCommLen)
    throw CryptoError(ErrorCode::Crypto, "PUT KEY: the communication key is 32 bytes");
  CommandApdu c;
  c.cla = 0x80;
  c.ins = kInsPutKey;
  c.p1 = current_kvn;
  c.p2 = 0x81;  // GP Card Specification section 11.8.2.2: one key, key identifier 1
  c.data = {new_kvn, 0x88, static_cast<std::uint8_t>(kCommLen)};
  const SecureBytes enc = aes_cbc_zero_icv(s_dek, new_comm, Botan::ENCRYPTION);
  c.data.insert(c.data.end(), enc.begin(), enc.end());
  const Bytes kcv = key_check_value(new_comm);
  c.data.push_back(static_cast<std::uint8_t>(kcv.size()));
  c.data.insert(c.data.end(), kcv.begin(), kcv.end());
  c.le = 256;
  return c;
}

PutCommKey parse_put_comm_key(const SecureBytes& s_dek, const CommandApdu& plain) {
  const auto& d = plain.data;
  if (plain.ins != kInsPutKey || plain.p2 != 0x81) bad_apdu("not a PUT KEY of one key");
  if (d.size() != 3 + kCommLen + 4 || d[1] != 0x88 || d[2] != kCommLen || d[3 + kCommLen] != 3)
    bad_apdu("PUT KEY data is not new KVN || 88 20 key || 03 KCV");
  PutCommKey out;
  out.new_kvn = d[0];
  const SecureBytes enc(d.begin() + 3, d.begin() + 3 + kCommLen);
  out.comm = aes_cbc_zero_icv(s_dek, enc, Botan::DECRYPTION);
  const Bytes kcv = key_check_value(out.comm);
  if (!Botan::constant_time_compare(kcv.data(), d.data() + 4 + kCommLen, 3)) {
    out.comm.clear();
    bad_apdu("PUT KEY: the key check value does not match");
  }
  return out;
}

}  // namespace keyline::core::scp
