#include "keyline/core/scp03.h"

#include <botan/block_cipher.h>
#include <botan/cipher_mode.h>
#include <botan/exceptn.h>
#include <botan/mac.h>
#include <botan/mem_ops.h>

#include <algorithm>
#include <memory>
#include <string>

namespace keyline::core::scp {

namespace {

constexpr std::size_t kBlock = 16;
constexpr std::size_t kMaxShortLc = 255;

[[noreturn]] void crypto_fail(const std::string& why) {
  throw CryptoError(ErrorCode::Crypto, "SCP03: " + why);
}

bool aes_key_size(std::size_t n) { return n == 16 || n == 32; }

std::string aes_name(std::size_t key_len) { return key_len == 16 ? "AES-128" : "AES-256"; }

SecureBytes cmac(const SecureBytes& key, const SecureBytes& input) {
  if (!aes_key_size(key.size())) crypto_fail("an AES key is 16 or 32 bytes");
  auto mac = Botan::MessageAuthenticationCode::create_or_throw("CMAC(" + aes_name(key.size()) + ")");
  mac->set_key(key);
  mac->update(input);
  return mac->final();
}

// AES-ECB of one block: the ICVs of Amendment D section 6.2.6.
SecureBytes aes_block(const SecureBytes& key, SecureBytes block) {
  auto aes = Botan::BlockCipher::create_or_throw(aes_name(key.size()));
  aes->set_key(key);
  aes->encrypt(block.data());
  return block;
}

// C-DECRYPTION ICV: AES(S-ENC, counter on 16 bytes); R-ENCRYPTION ICV: the same with its first byte
// set to 80 (Amendment D section 6.2.7).
SecureBytes counter_icv(const SecureBytes& s_enc, std::uint32_t counter, bool response) {
  SecureBytes block(kBlock, 0);
  if (response) block[0] = 0x80;
  for (int i = 0; i < 4; ++i) block[kBlock - 1 - i] = static_cast<std::uint8_t>(counter >> (8 * i));
  return aes_block(s_enc, block);
}

SecureBytes cbc(const SecureBytes& key, const SecureBytes& icv, SecureBytes data, Botan::Cipher_Dir dir) {
  auto mode = Botan::Cipher_Mode::create_or_throw(aes_name(key.size()) + "/CBC/NoPadding", dir);
  mode->set_key(key);
  mode->start(icv);
  mode->finish(data);
  return data;
}

// ISO/IEC 9797-1 padding method 2: 80 then 00 up to a multiple of the block, always added.
SecureBytes pad_m2(const SecureBytes& data) {
  SecureBytes out = data;
  out.push_back(0x80);
  while (out.size() % kBlock != 0) out.push_back(0x00);
  return out;
}

// Strips method 2 padding; false when there is none (the last non-zero byte is not 80). Zeros past
// one block are taken: the AES-128 card of the known answers pads 11 bytes to 32. The MAC is checked
// over the ciphertext before this, so what the padding says tells an attacker nothing.
bool unpad_m2(SecureBytes& data) {
  std::size_t i = data.size();
  while (i > 0 && data[i - 1] == 0x00) --i;
  if (i == 0 || data[i - 1] != 0x80) return false;
  data.resize(i - 1);
  return true;
}

SecureBytes header_with_lc(const CommandApdu& c, std::size_t lc) {
  return SecureBytes{c.cla, c.ins, c.p1, c.p2, static_cast<std::uint8_t>(lc)};
}

// Amendment D section 6.2.5: a response with no data and a SW other than 9000, 62XX or 63XX carries
// no R-MAC (the card answers an error without it).
bool answer_has_rmac(const ResponseApdu& r) {
  const std::uint8_t sw1 = r.sw1();
  return !r.data.empty() || r.sw == sw::ok || sw1 == 0x62 || sw1 == 0x63;
}

bool equal_ct(const std::uint8_t* a, const std::uint8_t* b, std::size_t n) {
  return Botan::constant_time_compare(a, b, n);
}

}  // namespace

SecureBytes scp03_kdf(const SecureBytes& key, std::uint8_t constant, const Bytes& context, std::size_t bits) {
  if (bits == 0 || bits % 64 != 0 || bits > 256) crypto_fail("KDF output is a multiple of 64 bits up to 256");
  SecureBytes out;
  for (std::uint8_t i = 1; out.size() * 8 < bits; ++i) {
    // Amendment D section 4.1.5 (data derivation scheme): label (11 zero bytes || constant), separator
    // 00, L, counter, context.
    SecureBytes input(11, 0x00);
    input.push_back(constant);
    input.push_back(0x00);
    input.push_back(static_cast<std::uint8_t>(bits >> 8));
    input.push_back(static_cast<std::uint8_t>(bits));
    input.push_back(i);
    input.insert(input.end(), context.begin(), context.end());
    const SecureBytes block = cmac(key, input);
    out.insert(out.end(), block.begin(), block.end());
  }
  out.resize(bits / 8);
  return out;
}

SessionKeys derive_scp03_session(const Scp03StaticKeys& keys, const Bytes& host_challenge,
                                 const Bytes& card_challenge) {
  const std::size_t n = keys.enc.size();
  if (!aes_key_size(n) || keys.mac.size() != n || keys.dek.size() != n)
    crypto_fail("static keys are all AES-128 or all AES-256");
  if ((host_challenge.size() != 8 && host_challenge.size() != 16) ||
      card_challenge.size() != host_challenge.size())
    crypto_fail("challenges are 8 (S8) or 16 (S16) bytes each");
  Bytes context = host_challenge;
  context.insert(context.end(), card_challenge.begin(), card_challenge.end());
  SessionKeys s;
  s.enc = scp03_kdf(keys.enc, kdf_constant::s_enc, context, 8 * n);
  s.mac = scp03_kdf(keys.mac, kdf_constant::s_mac, context, 8 * n);
  s.rmac = scp03_kdf(keys.mac, kdf_constant::s_rmac, context, 8 * n);
  s.dek = keys.dek;
  return s;
}

Bytes scp03_cryptogram(const SecureBytes& s_mac, std::uint8_t constant, const Bytes& host_challenge,
                       const Bytes& card_challenge, std::size_t mac_len) {
  if (mac_len != 8 && mac_len != 16) crypto_fail("a cryptogram is 8 or 16 bytes");
  Bytes context = host_challenge;
  context.insert(context.end(), card_challenge.begin(), card_challenge.end());
  const SecureBytes c = scp03_kdf(s_mac, constant, context, 8 * mac_len);
  return Bytes(c.begin(), c.end());
}

SecureMessaging::SecureMessaging(SessionKeys keys, Bytes chain, std::size_t mac_len, std::uint8_t level)
    : m_keys(std::move(keys)), m_chain(std::move(chain)), m_mac_len(mac_len), m_level(level) {
  const std::size_t n = m_keys.enc.size();
  if (!aes_key_size(n) || m_keys.mac.size() != n || m_keys.rmac.size() != n)
    crypto_fail("session keys are all AES-128 or all AES-256");
  if (m_chain.size() != kBlock) crypto_fail("the MAC chaining value is 16 bytes");
  if (mac_len != 8 && mac_len != 16) crypto_fail("the MAC length is 8 (S8) or 16 (S16)");
  // Amendment D section 7.1.1: R-ENCRYPTION needs R-MAC and C-DECRYPTION, C-DECRYPTION needs C-MAC.
  const bool consistent = (level & level::c_mac) && (!(level & level::r_enc) || (level & level::r_mac)) &&
                          (!(level & level::r_enc) || (level & level::c_dec));
  if (!consistent || (level & ~kFullLevel) != 0) crypto_fail("security level is not one Amendment D allows");
}

void SecureMessaging::require_alive() const {
  if (m_dead) throw SecureChannelError(ErrorCode::SecureChannel, "secure channel: the session has ended");
}

void SecureMessaging::fail(const std::string& why) {
  m_dead = true;
  m_answer_due = false;
  m_keys = SessionKeys{};
  throw SecureChannelError(ErrorCode::SecureChannel, "secure channel: " + why);
}

CommandApdu SecureMessaging::mac_command(const CommandApdu& plain) {
  require_alive();
  if (plain.data.size() + m_mac_len > kMaxShortLc) fail("command data too long for a short APDU");
  CommandApdu out = plain;
  out.cla = static_cast<std::uint8_t>(plain.cla | 0x04);
  out.extended = false;
  SecureBytes input(m_chain.begin(), m_chain.end());
  const SecureBytes header = header_with_lc(out, plain.data.size() + m_mac_len);
  input.insert(input.end(), header.begin(), header.end());
  input.insert(input.end(), plain.data.begin(), plain.data.end());
  const SecureBytes mac = cmac(m_keys.mac, input);
  m_chain.assign(mac.begin(), mac.end());
  out.data.insert(out.data.end(), mac.begin(), mac.begin() + static_cast<std::ptrdiff_t>(m_mac_len));
  return out;
}

CommandApdu SecureMessaging::wrap_command(const CommandApdu& plain) {
  require_alive();
  if (m_counter == 0xFFFFFFFFu) fail("the encryption counter has run out");
  CommandApdu enc = plain;
  if ((m_level & level::c_dec) && !plain.data.empty())
    enc.data =
        cbc(m_keys.enc, counter_icv(m_keys.enc, m_counter, false), pad_m2(plain.data), Botan::ENCRYPTION);
  CommandApdu out = mac_command(enc);
  // Amendment D section 6.2.6: the counter steps for every command, with data or without.
  m_answer_counter = m_counter++;
  m_answer_due = true;
  return out;
}

ResponseApdu SecureMessaging::unwrap_response(const ResponseApdu& wrapped) {
  require_alive();
  if (!m_answer_due) fail("an answer without a command");
  m_answer_due = false;
  if (!(m_level & level::r_mac) || !answer_has_rmac(wrapped)) return wrapped;
  if (wrapped.data.size() < m_mac_len) fail("answer too short for its R-MAC");
  ResponseApdu out;
  out.sw = wrapped.sw;
  out.data.assign(wrapped.data.begin(), wrapped.data.end() - static_cast<std::ptrdiff_t>(m_mac_len));
  SecureBytes input(m_chain.begin(), m_chain.end());
  input.insert(input.end(), out.data.begin(), out.data.end());
  input.push_back(wrapped.sw1());
  input.push_back(wrapped.sw2());
  const SecureBytes mac = cmac(m_keys.rmac, input);
  if (!equal_ct(mac.data(), wrapped.data.data() + out.data.size(), m_mac_len)) fail("wrong R-MAC");
  if ((m_level & level::r_enc) && !out.data.empty()) {
    if (out.data.size() % kBlock != 0) fail("encrypted answer is not whole blocks");
    out.data = cbc(m_keys.enc, counter_icv(m_keys.enc, m_answer_counter, true), out.data, Botan::DECRYPTION);
    if (!unpad_m2(out.data)) fail("bad padding in the answer");
  }
  return out;
}

CommandApdu SecureMessaging::unmac_command(const CommandApdu& wrapped) {
  require_alive();
  if (!(wrapped.cla & 0x04)) fail("command without secure messaging");
  if (wrapped.extended || wrapped.data.size() > kMaxShortLc) fail("secured commands are short APDUs");
  if (wrapped.data.size() < m_mac_len) fail("command too short for its C-MAC");
  const std::size_t body = wrapped.data.size() - m_mac_len;
  SecureBytes input(m_chain.begin(), m_chain.end());
  const SecureBytes header = header_with_lc(wrapped, wrapped.data.size());
  input.insert(input.end(), header.begin(), header.end());
  input.insert(input.end(), wrapped.data.begin(), wrapped.data.begin() + static_cast<std::ptrdiff_t>(body));
  const SecureBytes mac = cmac(m_keys.mac, input);
  if (!equal_ct(mac.data(), wrapped.data.data() + body, m_mac_len)) fail("wrong C-MAC");
  m_chain.assign(mac.begin(), mac.end());
  CommandApdu out = wrapped;
  out.cla = static_cast<std::uint8_t>(wrapped.cla & ~0x04);
  out.data.resize(body);
  return out;
}

CommandApdu SecureMessaging::unwrap_command(const CommandApdu& wrapped) {
  require_alive();
  if (m_counter == 0xFFFFFFFFu) fail("the encryption counter has run out");
  CommandApdu out = unmac_command(wrapped);
  if ((m_level & level::c_dec) && !out.data.empty()) {
    if (out.data.size() % kBlock != 0) fail("encrypted command data is not whole blocks");
    out.data = cbc(m_keys.enc, counter_icv(m_keys.enc, m_counter, false), out.data, Botan::DECRYPTION);
    if (!unpad_m2(out.data)) fail("bad padding in the command");
  }
  m_answer_counter = m_counter++;
  m_answer_due = true;
  return out;
}

ResponseApdu SecureMessaging::wrap_response(const ResponseApdu& plain) {
  require_alive();
  if (!m_answer_due) fail("an answer without an accepted command");
  m_answer_due = false;
  if (!(m_level & level::r_mac) || !answer_has_rmac(plain)) return plain;
  ResponseApdu out;
  out.sw = plain.sw;
  out.data = plain.data;
  if ((m_level & level::r_enc) && !plain.data.empty())
    out.data = cbc(m_keys.enc, counter_icv(m_keys.enc, m_answer_counter, true), pad_m2(plain.data),
                   Botan::ENCRYPTION);
  SecureBytes input(m_chain.begin(), m_chain.end());
  input.insert(input.end(), out.data.begin(), out.data.end());
  input.push_back(plain.sw1());
  input.push_back(plain.sw2());
  const SecureBytes mac = cmac(m_keys.rmac, input);
  out.data.insert(out.data.end(), mac.begin(), mac.begin() + static_cast<std::ptrdiff_t>(m_mac_len));
  return out;
}

}  // namespace keyline::core::scp
