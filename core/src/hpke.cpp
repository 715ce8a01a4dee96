#include "keyline/core/hpke.h"

#include <memory>
#include <string>

#include <botan/aead.h>
#include <botan/curve25519.h>
#include <botan/exceptn.h>
#include <botan/mac.h>
#include <botan/pubkey.h>
#include <botan/system_rng.h>

#include "keyline/core/error.h"

namespace keyline::core::hpke {

namespace {

[[noreturn]] void fail(const std::string& what) { throw CryptoError(ErrorCode::Crypto, "HPKE: " + what); }

void append(SecureBytes& out, const std::uint8_t* p, std::size_t n) { out.insert(out.end(), p, p + n); }
void append(SecureBytes& out, const std::string& s) { out.insert(out.end(), s.begin(), s.end()); }
void append_u16(SecureBytes& out, std::uint16_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

// suite_id for the KEM alone (section 4.1) and for the whole scheme (section 5.1).
SecureBytes kem_suite_id() {
  SecureBytes s;
  append(s, std::string("KEM"));
  append_u16(s, kKemId);
  return s;
}
SecureBytes hpke_suite_id() {
  SecureBytes s;
  append(s, std::string("HPKE"));
  append_u16(s, kKemId);
  append_u16(s, kKdfId);
  append_u16(s, kAeadId);
  return s;
}

// HKDF-Extract and HKDF-Expand, RFC 5869 section 2.2 and 2.3, with HMAC-SHA256.
SecureBytes hkdf_extract(const std::uint8_t* salt, std::size_t salt_len, const SecureBytes& ikm) {
  auto hmac = Botan::MessageAuthenticationCode::create_or_throw("HMAC(SHA-256)");
  // RFC 5869 section 2.2: an absent salt is HashLen zero bytes.
  if (salt_len == 0)
    hmac->set_key(SecureBytes(kHashSize, 0));
  else
    hmac->set_key(salt, salt_len);
  hmac->update(ikm);
  return hmac->final();
}

SecureBytes hkdf_expand(const SecureBytes& prk, const SecureBytes& info, std::size_t length) {
  if (length > 255 * kHashSize) fail("expand length too large");
  auto hmac = Botan::MessageAuthenticationCode::create_or_throw("HMAC(SHA-256)");
  hmac->set_key(prk);
  SecureBytes out;
  SecureBytes t;
  for (std::uint8_t i = 1; out.size() < length; ++i) {
    hmac->update(t);
    hmac->update(info);
    hmac->update(i);
    t = hmac->final();
    out.insert(out.end(), t.begin(), t.end());
  }
  out.resize(length);
  return out;
}

// LabeledExtract / LabeledExpand, RFC 9180 section 4.
SecureBytes labeled_extract(const SecureBytes& suite_id, const std::uint8_t* salt, std::size_t salt_len,
                            const std::string& label, const std::uint8_t* ikm, std::size_t ikm_len) {
  SecureBytes labeled_ikm;
  append(labeled_ikm, std::string("HPKE-v1"));
  append(labeled_ikm, suite_id.data(), suite_id.size());
  append(labeled_ikm, label);
  append(labeled_ikm, ikm, ikm_len);
  return hkdf_extract(salt, salt_len, labeled_ikm);
}

SecureBytes labeled_expand(const SecureBytes& suite_id, const SecureBytes& prk, const std::string& label,
                           const std::uint8_t* info, std::size_t info_len, std::size_t length) {
  if (length > 0xFFFF) fail("expand length does not fit I2OSP(L, 2)");
  SecureBytes labeled_info;
  append_u16(labeled_info, static_cast<std::uint16_t>(length));
  append(labeled_info, std::string("HPKE-v1"));
  append(labeled_info, suite_id.data(), suite_id.size());
  append(labeled_info, label);
  append(labeled_info, info, info_len);
  return hkdf_expand(prk, labeled_info, length);
}

void check_public_key(const Bytes& pk) {
  if (pk.size() != kPublicKeySize) fail("public key must be 32 bytes");
}
void check_secret_key(const SecureBytes& sk) {
  if (sk.size() != kSecretKeySize) fail("secret key must be 32 bytes");
}

// DH(sk, pk) for X25519 (RFC 7748 section 5). Botan 2 returns 32 zero bytes for a low-order
// point instead of failing; RFC 9180 section 7.1.4 requires the all-zero output to be rejected.
SecureBytes dh(const SecureBytes& sk, const Bytes& pk) {
  check_secret_key(sk);
  check_public_key(pk);
  Botan::Curve25519_PrivateKey priv(sk);
  Botan::PK_Key_Agreement ka(priv, Botan::system_rng(), "Raw");
  SecureBytes z = ka.derive_key(0, pk.data(), pk.size()).bits_of();
  std::uint8_t acc = 0;
  for (auto b : z) acc |= b;
  if (z.size() != 32 || acc == 0) fail("peer public key is a low-order point (all-zero DH output)");
  return z;
}

// ExtractAndExpand, section 4.1.
SecureBytes extract_and_expand(const SecureBytes& dh_out, const SecureBytes& kem_context) {
  const SecureBytes sid = kem_suite_id();
  const SecureBytes eae_prk = labeled_extract(sid, nullptr, 0, "eae_prk", dh_out.data(), dh_out.size());
  return labeled_expand(sid, eae_prk, "shared_secret", kem_context.data(), kem_context.size(), kHashSize);
}

}  // namespace

Bytes public_key_of(const SecureBytes& secret_key) {
  check_secret_key(secret_key);
  Botan::Curve25519_PrivateKey priv(secret_key);
  return priv.public_value();
}

KeyPair generate_key_pair() {
  SecureBytes sk = Botan::system_rng().random_vec(kSecretKeySize);
  Bytes pk = public_key_of(sk);
  return KeyPair{std::move(sk), std::move(pk)};
}

KeyPair derive_key_pair(const SecureBytes& ikm) {
  // Section 7.1.3: for X25519 the secret key is the expanded bytes as they are (clamping happens in X25519).
  if (ikm.size() < kSecretKeySize) fail("DeriveKeyPair needs at least Nsk bytes of input keying material");
  const SecureBytes sid = kem_suite_id();
  const SecureBytes dkp_prk = labeled_extract(sid, nullptr, 0, "dkp_prk", ikm.data(), ikm.size());
  SecureBytes sk = labeled_expand(sid, dkp_prk, "sk", nullptr, 0, kSecretKeySize);
  Bytes pk = public_key_of(sk);
  return KeyPair{std::move(sk), std::move(pk)};
}

SecureBytes encap_with(const Bytes& pk_r, const SecureBytes& sk_e, Bytes& enc_out) {
  const SecureBytes z = dh(sk_e, pk_r);
  enc_out = public_key_of(sk_e);
  SecureBytes kem_context(enc_out.begin(), enc_out.end());
  kem_context.insert(kem_context.end(), pk_r.begin(), pk_r.end());
  return extract_and_expand(z, kem_context);
}

SecureBytes decap(const Bytes& enc, const SecureBytes& sk_r) {
  if (enc.size() != kEncSize) fail("enc must be 32 bytes");
  const SecureBytes z = dh(sk_r, enc);
  const Bytes pk_rm = public_key_of(sk_r);
  SecureBytes kem_context(enc.begin(), enc.end());
  kem_context.insert(kem_context.end(), pk_rm.begin(), pk_rm.end());
  return extract_and_expand(z, kem_context);
}

Bytes key_schedule_context(const Bytes& info) {
  const SecureBytes sid = hpke_suite_id();
  // Base mode: psk_id is empty (section 5.1, VerifyPSKInputs).
  const SecureBytes psk_id_hash = labeled_extract(sid, nullptr, 0, "psk_id_hash", nullptr, 0);
  const SecureBytes info_hash = labeled_extract(sid, nullptr, 0, "info_hash", info.data(), info.size());
  Bytes ctx;
  ctx.push_back(0x00);  // mode_base
  ctx.insert(ctx.end(), psk_id_hash.begin(), psk_id_hash.end());
  ctx.insert(ctx.end(), info_hash.begin(), info_hash.end());
  return ctx;
}

SecureBytes key_schedule_secret(const SecureBytes& shared_secret) {
  // secret = LabeledExtract(shared_secret, "secret", psk) with psk empty in base mode.
  return labeled_extract(hpke_suite_id(), shared_secret.data(), shared_secret.size(), "secret", nullptr, 0);
}

Context key_schedule(const SecureBytes& shared_secret, const Bytes& info) {
  const SecureBytes sid = hpke_suite_id();
  const Bytes ctx = key_schedule_context(info);
  const SecureBytes secret = key_schedule_secret(shared_secret);
  SecureBytes key = labeled_expand(sid, secret, "key", ctx.data(), ctx.size(), kKeySize);
  const SecureBytes nonce = labeled_expand(sid, secret, "base_nonce", ctx.data(), ctx.size(), kNonceSize);
  SecureBytes exp = labeled_expand(sid, secret, "exp", ctx.data(), ctx.size(), kHashSize);
  return Context(std::move(key), Bytes(nonce.begin(), nonce.end()), std::move(exp));
}

Context::Context(SecureBytes key, Bytes base_nonce, SecureBytes exporter_secret)
    : m_key(std::move(key)), m_base_nonce(std::move(base_nonce)), m_exporter_secret(std::move(exporter_secret)) {
  if (m_key.size() != kKeySize || m_base_nonce.size() != kNonceSize || m_exporter_secret.size() != kHashSize)
    fail("context parameters have the wrong size");
}

Bytes Context::compute_nonce(std::uint64_t seq) const {
  // nonce = base_nonce XOR I2OSP(seq, Nn); seq fits in the low 8 of the 12 bytes.
  Bytes nonce = m_base_nonce;
  for (std::size_t i = 0; i < 8; ++i)
    nonce[kNonceSize - 1 - i] ^= static_cast<std::uint8_t>(seq >> (8 * i));
  return nonce;
}

void Context::increment_seq() {
  // Section 5.2 bounds seq by 2^(8*Nn)-1; our counter is 64 bits, so its end is the bound.
  if (m_seq == UINT64_MAX) fail("message limit reached");
  ++m_seq;
}

Bytes Context::seal(const Bytes& aad, const std::uint8_t* plaintext, std::size_t len) {
  if (m_seq == UINT64_MAX) fail("message limit reached");
  auto aead = Botan::AEAD_Mode::create_or_throw("AES-128/GCM", Botan::ENCRYPTION);
  aead->set_key(m_key);
  aead->set_associated_data(aad.data(), aad.size());
  aead->start(compute_nonce(m_seq));
  SecureBytes buf(plaintext, plaintext + len);
  aead->finish(buf);
  increment_seq();
  return Bytes(buf.begin(), buf.end());
}

SecureBytes Context::open(const Bytes& aad, const std::uint8_t* ciphertext, std::size_t len) {
  if (len < kTagSize) fail("ciphertext shorter than the tag");
  if (m_seq == UINT64_MAX) fail("message limit reached");
  auto aead = Botan::AEAD_Mode::create_or_throw("AES-128/GCM", Botan::DECRYPTION);
  aead->set_key(m_key);
  aead->set_associated_data(aad.data(), aad.size());
  aead->start(compute_nonce(m_seq));
  SecureBytes buf(ciphertext, ciphertext + len);
  try {
    aead->finish(buf);
  } catch (const Botan::Invalid_Authentication_Tag&) {
    fail("message does not authenticate");
  }
  increment_seq();
  return buf;
}

SecureBytes Context::export_secret(const Bytes& exporter_context, std::size_t length) const {
  if (length > 255 * kHashSize) fail("export length too large");
  return labeled_expand(hpke_suite_id(), m_exporter_secret, "sec", exporter_context.data(),
                        exporter_context.size(), length);
}

SenderSetup setup_base_s_with(const Bytes& pk_r, const Bytes& info, const SecureBytes& sk_e) {
  Bytes enc;
  const SecureBytes shared = encap_with(pk_r, sk_e, enc);
  return SenderSetup{std::move(enc), key_schedule(shared, info)};
}

SenderSetup setup_base_s(const Bytes& pk_r, const Bytes& info) {
  const KeyPair eph = generate_key_pair();
  return setup_base_s_with(pk_r, info, eph.secret_key);
}

Context setup_base_r(const Bytes& enc, const SecureBytes& sk_r, const Bytes& info) {
  return key_schedule(decap(enc, sk_r), info);
}

Bytes to_wire(const Sealed& sealed) {
  if (sealed.enc.size() != kEncSize) fail("enc must be 32 bytes");
  Bytes out = sealed.enc;
  out.insert(out.end(), sealed.ciphertext.begin(), sealed.ciphertext.end());
  return out;
}

Sealed from_wire(const std::uint8_t* data, std::size_t len) {
  if (len < kEncSize + kTagSize) fail("message shorter than enc and tag");
  return Sealed{Bytes(data, data + kEncSize), Bytes(data + kEncSize, data + len)};
}

Bytes seal(const Bytes& pk_r, const Bytes& info, const Bytes& aad, const std::uint8_t* plaintext, std::size_t len) {
  SenderSetup s = setup_base_s(pk_r, info);
  return to_wire(Sealed{std::move(s.enc), s.context.seal(aad, plaintext, len)});
}

Bytes seal_with(const Bytes& pk_r, const Bytes& info, const Bytes& aad, const SecureBytes& plaintext,
                const SecureBytes& sk_e) {
  SenderSetup s = setup_base_s_with(pk_r, info, sk_e);
  return to_wire(Sealed{std::move(s.enc), s.context.seal(aad, plaintext)});
}

SecureBytes open(const SecureBytes& sk_r, const Bytes& info, const Bytes& aad, const Bytes& wire) {
  const Sealed parts = from_wire(wire.data(), wire.size());
  Context ctx = setup_base_r(parts.enc, sk_r, info);
  return ctx.open(aad, parts.ciphertext);
}

}  // namespace keyline::core::hpke
