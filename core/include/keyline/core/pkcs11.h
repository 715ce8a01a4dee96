// PKCS#11 adapter (OASIS PKCS #11 v2.40 base specification) over p11-kit's <p11-kit/pkcs11.h>.
// Debian's Botan 2 ships without its PKCS#11 module, so keyline talks to the token itself and
// offers a token key to Botan as a Botan::Private_Key (Pkcs11EcdsaPrivateKey), so that
// Botan::X509_CA and Botan::PK_Signer sign with a key that never leaves the HSM.
//
// Object model:
//   Pkcs11Module   the loaded library (dlopen + C_GetFunctionList + C_Initialize(CKF_OS_LOCKING_OK)).
//                  One per process and module path; copies share it. C_Finalize when the last goes.
//   Pkcs11Token    one token found by label, logged in as user, with a bounded session pool:
//                  concurrent callers wait for a free session instead of exceeding the token's
//                  session limit. All key operations live here.
//   Pkcs11Session  one open session (RAII): leased from the pool, returned on destruction.
//
// Handles and attribute types are PKCS#11 CK_ULONGs, spelled `unsigned long` here so that users of
// this header do not need the p11-kit include path.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <botan/ecdsa.h>
#include <botan/pk_keys.h>

#include "keyline/core/bytes.h"

namespace keyline::core {

using Pkcs11Handle = unsigned long;  // CK_OBJECT_HANDLE, CK_SLOT_ID, CK_SESSION_HANDLE
using Pkcs11Ulong = unsigned long;   // CK_ATTRIBUTE_TYPE, CK_MECHANISM_TYPE, CK_RV

// "CKR_PIN_INCORRECT" for 0xA0; "CKR_0x..." when unknown.
std::string pkcs11_rv_name(Pkcs11Ulong rv);

class Pkcs11Module {
 public:
  // Loads the module at `path` (or shares the already loaded one). Throws Pkcs11Error(Pkcs11).
  explicit Pkcs11Module(const std::string& path);
  ~Pkcs11Module();

  const std::string& path() const noexcept;
  // Slot holding the token with this label (CK_TOKEN_INFO.label, blank padded). Throws Pkcs11NoToken,
  // or Pkcs11DuplicateToken when two initialized tokens carry the label (never a choice between them).
  Pkcs11Handle find_slot(const std::string& token_label) const;
  std::vector<Pkcs11Ulong> mechanisms(Pkcs11Handle slot) const;

  struct Library;  // implementation detail (pkcs11.cpp)
  const std::shared_ptr<Library>& library() const noexcept { return m_lib; }

 private:
  std::shared_ptr<Library> m_lib;
};

class Pkcs11Token;

// One open, logged-in session. Not thread-safe: one thread at a time (the pool guarantees it).
class Pkcs11Session {
 public:
  Pkcs11Session(std::shared_ptr<Pkcs11Module::Library> lib, Pkcs11Handle slot, const SecureBytes& user_pin);
  ~Pkcs11Session();
  Pkcs11Session(const Pkcs11Session&) = delete;
  Pkcs11Session& operator=(const Pkcs11Session&) = delete;

  Pkcs11Handle handle() const noexcept { return m_session; }
  // Objects of class `object_class` (CKO_*) with this CKA_LABEL.
  std::vector<Pkcs11Handle> find_objects(Pkcs11Ulong object_class, const std::string& label) const;
  // Raw attribute value. Throws Pkcs11Error(Pkcs11, rv) with the CK_RV name, for example
  // CKR_ATTRIBUTE_SENSITIVE when asked for CKA_VALUE of a sensitive key.
  Bytes attribute(Pkcs11Handle object, Pkcs11Ulong type) const;
  bool bool_attribute(Pkcs11Handle object, Pkcs11Ulong type) const;

 private:
  std::shared_ptr<Pkcs11Module::Library> m_lib;
  Pkcs11Handle m_session = 0;
};

// One key object as docs/custody.md ("keys status") lists it.
struct Pkcs11KeyInfo {
  std::string label;
  std::string object_class;  // "private", "public", "secret"
  std::string key_type;      // "EC", "EC_EDWARDS", "RSA", "AES", "GENERIC_SECRET", or "0x..."
  Bytes id;
  std::vector<std::string> usages;  // as Pkcs11Token::key_usages
  bool sensitive = false, extractable = false, wrap_with_trusted = false, never_extractable = false;
  bool trusted = false, local = false;
};

// Token-side public part of a generated EC key pair.
struct Pkcs11KeyPair {
  Pkcs11Handle public_key = 0;
  Pkcs11Handle private_key = 0;
};

class Pkcs11Token : public std::enable_shared_from_this<Pkcs11Token> {
 public:
  // Finds the token and logs in (C_Login CKU_USER; CKR_USER_ALREADY_LOGGED_IN is fine).
  // max_sessions bounds the pool. Throws Pkcs11NoToken, Pkcs11LoginFailed (wrong or locked PIN).
  // Login state belongs to the process, not the session (PKCS #11 v2.40 section 5.6): while another
  // Pkcs11Token of this process is logged in to the same token, C_Login answers
  // CKR_USER_ALREADY_LOGGED_IN without looking at the PIN, so open one Pkcs11Token per token and share it.
  static std::shared_ptr<Pkcs11Token> open(const std::string& module_path, const std::string& token_label,
                                           const SecureBytes& user_pin, std::size_t max_sessions = 8);
  ~Pkcs11Token();
  Pkcs11Token(const Pkcs11Token&) = delete;
  Pkcs11Token& operator=(const Pkcs11Token&) = delete;

  // A session leased from the pool; waits while all max_sessions are in use. Every Pkcs11Token
  // method leases its own session, so do not call them while holding a Lease (with a pool of one
  // that would wait forever).
  class Lease {
   public:
    Lease(Pkcs11Token& token, std::unique_ptr<Pkcs11Session> s) : m_token(&token), m_session(std::move(s)) {}
    Lease(Lease&&) = default;
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    Pkcs11Session& operator*() const { return *m_session; }
    Pkcs11Session* operator->() const { return m_session.get(); }

   private:
    Pkcs11Token* m_token;
    std::unique_ptr<Pkcs11Session> m_session;
  };
  Lease session();

  const Pkcs11Module& module() const noexcept { return m_module; }
  Pkcs11Handle slot() const noexcept { return m_slot; }
  std::vector<Pkcs11Ulong> mechanisms() const { return m_module.mechanisms(m_slot); }

  // --- EC P-256 signing keys ---------------------------------------------------------------
  // On-token key pair: private half CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_SIGN true and every
  // other usage (SIGN_RECOVER, DECRYPT, UNWRAP, DERIVE), CKA_EXTRACTABLE and CKA_MODIFIABLE false;
  // public half CKA_VERIFY only (VERIFY_RECOVER, ENCRYPT, WRAP, DERIVE false).
  // Throws Pkcs11Error(Pkcs11) when a private key with this label already exists.
  Pkcs11KeyPair generate_ec_p256(const std::string& label, const Bytes& id);
  bool has_private_key(const std::string& label);
  bool has_public_key(const std::string& label);
  bool has_secret_key(const std::string& label);
  // The usages ("encrypt", "decrypt", "sign", "verify", "wrap", "unwrap", "derive") any private, public
  // or secret key labelled `label` allows, in that order: what a key made elsewhere (or by an earlier
  // version, before every template named every usage) permits beyond its role.
  std::vector<std::string> key_usages(const std::string& label);
  Pkcs11Handle find_private_key(const std::string& label);  // Throws Pkcs11KeyNotFound
  // The public half (CKA_EC_POINT of the CKO_PUBLIC_KEY with this label). Throws Pkcs11KeyNotFound.
  std::unique_ptr<Botan::ECDSA_PublicKey> ec_public_key(const std::string& label);
  // ECDSA over SHA-256(message): SoftHSM 2.6 has CKM_ECDSA but not CKM_ECDSA_SHA256, so the hash
  // is computed here and the token signs the digest. Raw form is r||s (PKCS #11 v2.40 section
  // 2.3.1: "r and s ... each of length nLen"); DER form is the X9.62 Ecdsa-Sig-Value SEQUENCE.
  Bytes sign_ecdsa_sha256_raw(Pkcs11Handle private_key, const std::uint8_t* msg, std::size_t len);
  Bytes sign_digest_raw(Pkcs11Handle private_key, const std::uint8_t* digest, std::size_t len);
  Bytes sign_ecdsa_sha256_der(Pkcs11Handle private_key, const std::uint8_t* msg, std::size_t len);

  // --- Ed25519 signing keys (the transparency log key, docs/transparency.md) -----------------
  // CKM_EC_EDWARDS_KEY_PAIR_GEN over edwards25519 with the same attributes as generate_ec_p256:
  // private half sensitive, never extractable, CKA_SIGN only; public half CKA_VERIFY only.
  // Throws Pkcs11Error(Pkcs11) when a private or public key with this label already exists.
  Pkcs11KeyPair generate_ed25519(const std::string& label, const Bytes& id);
  // The 32-byte RFC 8032 public key of the CKO_PUBLIC_KEY labelled `label`, after checking that
  // its CKA_EC_PARAMS name edwards25519. Throws Pkcs11KeyNotFound, Pkcs11Error(Pkcs11).
  Bytes ed25519_public_key(const std::string& label);
  // Pure Ed25519 (CKM_EDDSA without parameters, RFC 8032 section 5.1.6): the 64-byte signature.
  Bytes sign_eddsa(Pkcs11Handle private_key, const std::uint8_t* msg, std::size_t len);

  // --- P-256 key agreement (the station's SCP11 OCE key, docs/channel.md) --------------------
  // CKM_EC_KEY_PAIR_GEN over P-256 for ECDH only: private half CKA_DERIVE true, sensitive, never
  // extractable, not modifiable, SIGN, SIGN_RECOVER, DECRYPT, UNWRAP false; public half with no usage
  // (VERIFY, VERIFY_RECOVER, ENCRYPT, WRAP, DERIVE false). Its public point: ec_public_key(label).
  // Throws Pkcs11Error(Pkcs11) when a private or public key with this label already exists.
  Pkcs11KeyPair generate_ec_p256_ecdh(const std::string& label, const Bytes& id);
  // ECDH of the private key labelled `private_label` with `peer_point` (65-byte uncompressed):
  // CKM_ECDH1_DERIVE with CKD_NULL (PKCS #11 v2.40 section 2.3.7) into a session object
  // (CKK_GENERIC_SECRET, 32 bytes, CKA_TOKEN false, no usage), whose CKA_VALUE is read and which is
  // destroyed before returning: the x-coordinate of the shared point (SEC 1 section 3.3.1), what
  // scp11::StaticEcdh returns. Throws Pkcs11KeyNotFound, Pkcs11Error(Pkcs11) (also for a point the
  // token refuses as not on the curve).
  SecureBytes ecdh_derive(const std::string& private_label, const Bytes& peer_point);

  // --- secret keys that stay on the token --------------------------------------------------
  // CKK_GENERIC_SECRET, 32 bytes, CKA_SIGN only (for CKM_SHA256_HMAC), sensitive, never extractable.
  Pkcs11Handle generate_hmac_key(const std::string& label);
  // HMAC-SHA-256 computed inside the token with the key labelled `key_label`.
  SecureBytes derive_hmac_sha256(const std::string& key_label, const Bytes& data);
  // CKK_AES 256-bit, CKA_ENCRYPT/CKA_DECRYPT only (no WRAP/UNWRAP), sensitive, never extractable.
  Pkcs11Handle generate_aes_key(const std::string& label);
  // AES-256-GCM on the token: output nonce(12) || ciphertext || tag(16). The key labelled
  // `key_label` never leaves the token. The associated data is "keyline wrap v1" || aad: `aad`
  // names what the blob belongs to (its row and public half), must not be empty, and must be the
  // same to unwrap. unwrap_data throws CryptoError(Crypto) on a bad tag, which is also what a blob
  // moved to another row, or wrapped before aad existed, gives.
  Bytes wrap_data(const std::string& key_label, const SecureBytes& plain, const Bytes& aad);
  SecureBytes unwrap_data(const std::string& key_label, const Bytes& wrapped, const Bytes& aad);

  // --- AES derivation and CMAC on the token (the service channel's static keys, docs/service.md) ---
  // What a key made by derive_aes_ecb is: a session object (CKA_TOKEN false) unless `token`, sensitive,
  // CKA_EXTRACTABLE as `extractable` (the station reads a derived comm key; the service never does), with
  // only the usages named true. `length` is CKA_VALUE_LEN: 16 or 32.
  struct DerivedAesKey {
    std::size_t length = 32;
    bool derive = false, sign = false, extractable = false;
  };
  // C_DeriveKey with CKM_AES_ECB_ENCRYPT_DATA (PKCS #11 v2.40 current mechanisms section 2.16): the
  // value is the first `length` bytes of AES-ECB(base, data); `data` is a multiple of 16 bytes. The base
  // needs CKA_DERIVE. The caller destroys the object (destroy_object) when done with it.
  Pkcs11Handle derive_aes_ecb(Pkcs11Handle base, const Bytes& data, const DerivedAesKey& attributes);
  // AES-CMAC (CKM_AES_CMAC, NIST SP 800-38B), the 16-byte tag, with a key that has CKA_SIGN.
  Bytes cmac(Pkcs11Handle key, const Bytes& data);
  // CKA_VALUE of an extractable, non-sensitive session key (the station's derived comm key).
  SecureBytes secret_value(Pkcs11Handle key);
  // CKK_AES 256-bit master for derivation version 2: CKA_DERIVE only, sensitive, CKA_EXTRACTABLE true
  // but CKA_WRAP_WITH_TRUSTED true (it leaves the token only wrapped under a trusted key).
  Pkcs11Handle generate_mirrorable_aes_derive_key(const std::string& label, const Bytes& id);

  Pkcs11Handle find_secret_key(const std::string& label);  // Throws Pkcs11KeyNotFound
  Pkcs11Handle find_public_key(const std::string& label);  // Throws Pkcs11KeyNotFound
  void destroy_object(Pkcs11Handle object);

  // --- custody: keys that move between tokens under dual control (docs/custody.md) ----------
  // CK_TOKEN_INFO.serialNumber, blanks trimmed.
  std::string serial() const;
  // Every key object on the token (private, public, secret) with what docs/custody.md lists.
  std::vector<Pkcs11KeyInfo> list_keys();
  // CKK_GENERIC_SECRET, 32 bytes, CKA_SIGN only (HMAC-SHA-256), sensitive, CKA_EXTRACTABLE true but
  // CKA_WRAP_WITH_TRUSTED true: it leaves the token only wrapped under a key the SO marked trusted.
  Pkcs11Handle generate_mirrorable_hmac_key(const std::string& label, const Bytes& id);
  // RSA-3072 receiving pair: private half sensitive, never extractable, CKA_UNWRAP only; public half
  // CKA_WRAP only (it is exported, and a trusted copy of it made on the sending token).
  Pkcs11KeyPair generate_rsa_receiving_pair(const std::string& label, const Bytes& id);
  // Modulus and public exponent of the CKO_PUBLIC_KEY labelled `label` (CKK_RSA). Throws Pkcs11KeyNotFound.
  std::pair<Bytes, Bytes> rsa_public_key(const std::string& label);
  // C_WrapKey with CKM_RSA_PKCS_OAEP (SHA-1, MGF1-SHA-1: all SoftHSM 2.6.1 offers) of a secret key.
  Bytes wrap_key_rsa_oaep(Pkcs11Handle wrapping_public_key, Pkcs11Handle key);
  // C_UnwrapKey into a token HMAC key of the same attributes as generate_mirrorable_hmac_key.
  Pkcs11Handle unwrap_hmac_key_rsa_oaep(Pkcs11Handle unwrapping_private_key, const Bytes& wrapped,
                                        const std::string& label, const Bytes& id);
  // The same into a token AES-256 key of the attributes generate_mirrorable_aes_derive_key gives
  // (CKA_DERIVE only): master version 2 and later (docs/custody.md).
  Pkcs11Handle unwrap_aes_derive_key_rsa_oaep(Pkcs11Handle unwrapping_private_key, const Bytes& wrapped,
                                              const std::string& label, const Bytes& id);
  // Logs in as Security Officer on its own (no Pkcs11Token of this process may be logged in to the
  // token: login state is the application's, PKCS #11 v2.40 section 5.6) and creates a token RSA
  // public key with CKA_TRUSTED and CKA_WRAP only, not modifiable. Only the SO may set CKA_TRUSTED.
  static void so_create_trusted_rsa_wrap_key(const std::string& module_path, const std::string& token_label,
                                             const SecureBytes& so_pin, const std::string& label, const Bytes& id,
                                             const Bytes& modulus, const Bytes& exponent);

 private:
  Pkcs11Token(Pkcs11Module module, Pkcs11Handle slot, SecureBytes pin, std::size_t max_sessions);
  void give_back(std::unique_ptr<Pkcs11Session> s);
  // `use`: the usage attributes (CKA_ENCRYPT, CKA_SIGN, ...) set true; every other one is set false.
  Pkcs11Handle generate_secret_key(const std::string& label, Pkcs11Ulong key_type, Pkcs11Ulong mechanism,
                                   const std::vector<Pkcs11Ulong>& use, const char* what);
  // The secret key labelled `label`, found once and remembered; with_secret_key runs `op` with the
  // handle and, when the token calls it stale (key destroyed and re-created under the same label),
  // finds the key again and runs `op` once more.
  Pkcs11Handle cached_secret_key(const std::string& label);
  void forget_secret_key(const std::string& label);
  template <typename Op>
  auto with_secret_key(const std::string& label, Op op) -> decltype(op(Pkcs11Handle{}));

  Pkcs11Module m_module;
  Pkcs11Handle m_slot;
  SecureBytes m_pin;
  std::size_t m_max_sessions;
  std::mutex m_mutex;
  std::condition_variable m_cv;
  std::vector<std::unique_ptr<Pkcs11Session>> m_idle;
  std::size_t m_open = 0;
  std::mutex m_handles_mutex;
  std::map<std::string, Pkcs11Handle> m_secret_handles;  // label -> handle, filled on first use
};

// A P-256 key on the token, usable wherever Botan wants a Private_Key for signing
// (Botan::PK_Signer with "EMSA1(SHA-256)", Botan::X509_CA, X509_CA::make_cert via choose_sig_format).
// The private scalar is unreadable: private_key_bits() throws, check_key() checks the public point.
class Pkcs11EcdsaPrivateKey final : public Botan::ECDSA_PublicKey, public Botan::Private_Key {
 public:
  // Throws Pkcs11KeyNotFound unless both halves with this label exist.
  Pkcs11EcdsaPrivateKey(std::shared_ptr<Pkcs11Token> token, const std::string& label);

  const std::string& label() const noexcept { return m_label; }
  Pkcs11Handle handle() const noexcept { return m_handle; }

  Botan::secure_vector<std::uint8_t> private_key_bits() const override;
  bool check_key(Botan::RandomNumberGenerator& rng, bool strong) const override;
  std::unique_ptr<Botan::PK_Ops::Signature> create_signature_op(Botan::RandomNumberGenerator& rng,
                                                                const std::string& params,
                                                                const std::string& provider) const override;

 private:
  Pkcs11EcdsaPrivateKey(std::shared_ptr<Pkcs11Token> token, const std::string& label,
                        std::unique_ptr<Botan::ECDSA_PublicKey> pub);

  std::shared_ptr<Pkcs11Token> m_token;
  std::string m_label;
  Pkcs11Handle m_handle = 0;
};

}  // namespace keyline::core
