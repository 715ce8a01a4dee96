// Hybrid Public Key Encryption, RFC 9180, base mode (mode_base = 0x00) for exactly one suite:
//   KEM  DHKEM(X25519, HKDF-SHA256)  kem_id  0x0020  (RFC 9180 section 7.1)
//   KDF  HKDF-SHA256                 kdf_id  0x0001  (section 7.2)
//   AEAD AES-128-GCM                 aead_id 0x0001  (section 7.3)
// Wire form of a single-shot message (docs/design.md section 5): enc (32) || ciphertext (plaintext || 16-byte tag).
// The suite is fixed: nothing on the wire names it, so there is nothing to negotiate or downgrade.
// Every failure (bad key size, low-order peer key per section 7.1.4, failed authentication, short
// message) is a CryptoError(Crypto) with a message that carries no key or plaintext byte.
#pragma once

#include <cstdint>

#include "keyline/core/bytes.h"

namespace keyline::core::hpke {

constexpr std::uint16_t kKemId = 0x0020;
constexpr std::uint16_t kKdfId = 0x0001;
constexpr std::uint16_t kAeadId = 0x0001;
constexpr std::size_t kEncSize = 32;      // Nenc
constexpr std::size_t kPublicKeySize = 32;  // Npk
constexpr std::size_t kSecretKeySize = 32;  // Nsk
constexpr std::size_t kKeySize = 16;      // Nk
constexpr std::size_t kNonceSize = 12;    // Nn
constexpr std::size_t kTagSize = 16;      // Nt

// The info of a third party's message to a device (docs/service.md "Messages from a third party"): the
// service server seals with it, the device opens with it, so it is defined once here.
constexpr const char* kServiceMessageInfo = "keyline/service/message/v1";
constexpr std::size_t kHashSize = 32;     // Nh, also Nsecret

struct KeyPair {
  SecureBytes secret_key;  // 32-byte X25519 scalar (as stored, unclamped)
  Bytes public_key;        // 32-byte u-coordinate (SerializePublicKey)
};

// A fresh key pair from the system RNG.
KeyPair generate_key_pair();
// DeriveKeyPair(ikm) for DHKEM(X25519, HKDF-SHA256), RFC 9180 section 7.1.3. ikm must be >= 32 bytes.
KeyPair derive_key_pair(const SecureBytes& ikm);
// pk(sk): the public key of a 32-byte X25519 secret key.
Bytes public_key_of(const SecureBytes& secret_key);

// An encryption context after the key schedule (section 5.1), used for one direction only.
// Each seal/open uses nonce = base_nonce XOR I2OSP(seq, Nn) and then increments seq (section 5.2).
class Context {
 public:
  Context(SecureBytes key, Bytes base_nonce, SecureBytes exporter_secret);

  // Sender side. Returns ciphertext || tag.
  Bytes seal(const Bytes& aad, const std::uint8_t* plaintext, std::size_t len);
  Bytes seal(const Bytes& aad, const Bytes& plaintext) { return seal(aad, plaintext.data(), plaintext.size()); }
  Bytes seal(const Bytes& aad, const SecureBytes& plaintext) { return seal(aad, plaintext.data(), plaintext.size()); }
  // Receiver side. On failure the sequence number is not advanced (section 5.2: the receiver
  // may retry the next message). Throws CryptoError(Crypto).
  SecureBytes open(const Bytes& aad, const std::uint8_t* ciphertext, std::size_t len);
  SecureBytes open(const Bytes& aad, const Bytes& ciphertext) { return open(aad, ciphertext.data(), ciphertext.size()); }

  // Secret export, section 5.3: LabeledExpand(exporter_secret, "sec", exporter_context, L), L <= 255*Nh.
  SecureBytes export_secret(const Bytes& exporter_context, std::size_t length) const;

  // The nonce for a given sequence number (ComputeNonce, section 5.2).
  Bytes compute_nonce(std::uint64_t seq) const;
  std::uint64_t seq() const noexcept { return m_seq; }
  // Moves the sequence number (tests replay the RFC vectors at seq 255 and 256 this way).
  void set_seq(std::uint64_t seq) noexcept { m_seq = seq; }

  const SecureBytes& key() const noexcept { return m_key; }
  const Bytes& base_nonce() const noexcept { return m_base_nonce; }
  const SecureBytes& exporter_secret() const noexcept { return m_exporter_secret; }

 private:
  void increment_seq();

  SecureBytes m_key;
  Bytes m_base_nonce;
  SecureBytes m_exporter_secret;
  std::uint64_t m_seq = 0;
};

// KEM pieces (section 4.1), exposed so the RFC vectors can check each step.
// Encap with a given ephemeral secret key: returns shared_secret, writes enc.
SecureBytes encap_with(const Bytes& pk_r, const SecureBytes& sk_e, Bytes& enc_out);
SecureBytes decap(const Bytes& enc, const SecureBytes& sk_r);

// Key schedule pieces (section 5.1), base mode with empty psk and psk_id.
Bytes key_schedule_context(const Bytes& info);  // mode || psk_id_hash || info_hash
SecureBytes key_schedule_secret(const SecureBytes& shared_secret);  // LabeledExtract(shared_secret, "secret", psk)
Context key_schedule(const SecureBytes& shared_secret, const Bytes& info);

struct SenderSetup {
  Bytes enc;
  Context context;
};
// SetupBaseS (section 5.1.1) with a fresh ephemeral key.
SenderSetup setup_base_s(const Bytes& pk_r, const Bytes& info);
// SetupBaseS with the given ephemeral secret key: deterministic, for known-answer tests only.
SenderSetup setup_base_s_with(const Bytes& pk_r, const Bytes& info, const SecureBytes& sk_e);
// SetupBaseR (section 5.1.1).
Context setup_base_r(const Bytes& enc, const SecureBytes& sk_r, const Bytes& info);

// Single-shot API (section 6.1) in keyline's wire form enc || ciphertext.
struct Sealed {
  Bytes enc;
  Bytes ciphertext;
};
Bytes to_wire(const Sealed& sealed);
// Splits a wire message. Throws CryptoError(Crypto) when it is shorter than enc || tag.
Sealed from_wire(const std::uint8_t* data, std::size_t len);

Bytes seal(const Bytes& pk_r, const Bytes& info, const Bytes& aad, const std::uint8_t* plaintext, std::size_t len);
inline Bytes seal(const Bytes& pk_r, const Bytes& info, const Bytes& aad, const Bytes& plaintext) {
  return seal(pk_r, info, aad, plaintext.data(), plaintext.size());
}
inline Bytes seal(const Bytes& pk_r, const Bytes& info, const Bytes& aad, const SecureBytes& plaintext) {
  return seal(pk_r, info, aad, plaintext.data(), plaintext.size());
}
// Deterministic variant with a given ephemeral secret key (tests only).
Bytes seal_with(const Bytes& pk_r, const Bytes& info, const Bytes& aad, const SecureBytes& plaintext,
                const SecureBytes& sk_e);
SecureBytes open(const SecureBytes& sk_r, const Bytes& info, const Bytes& aad, const Bytes& wire);

}  // namespace keyline::core::hpke
