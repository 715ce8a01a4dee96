#include "keyline/core/chip_identity.h"

#include <botan/ber_dec.h>
#include <botan/der_enc.h>
#include <botan/ec_group.h>
#include <botan/ecc_key.h>
#include <botan/ecdsa.h>
#include <botan/hash.h>
#include <botan/pubkey.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>
#include <botan/x509path.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"

namespace keyline::core::chip {

namespace {

const Botan::OID kOidSan("2.5.29.17");
constexpr char kMagic[4] = {'K', 'L', 'A', 'T'};
constexpr std::uint8_t kStatementVersion = 0x01;
constexpr std::size_t kP256PointSize = 65;
constexpr std::size_t kX25519Size = 32;
constexpr std::size_t kContextSize = 32;
constexpr std::size_t kMaxSignature = 80;  // DER ECDSA P-256: at most 72 bytes
constexpr int kVendorYears = 20;
// An attestation key signs statements and nothing else: its statement format is its own, and the
// "KLAT" magic keeps a statement from passing as any other signed keyline structure.
constexpr const char* kSigAlgo = "EMSA1(SHA-256)";

[[noreturn]] void bad_statement(const std::string& why) {
  throw FormatError(ErrorCode::BadAttestation, "attestation statement: " + why);
}
[[noreturn]] void not_genuine(const ChipId& chip, const std::string& why) {
  throw Error(ErrorCode::ChipNotGenuine, "chip " + chip.str() + " is not genuine: " + why);
}

Botan::BigInt random_serial(Botan::RandomNumberGenerator& rng) {
  std::uint8_t b[16];
  rng.randomize(b, sizeof b);
  b[0] = static_cast<std::uint8_t>((b[0] & 0x7F) | 0x40);  // RFC 5280 section 4.1.2.2: positive, <= 20 octets
  return Botan::BigInt(b, sizeof b);
}

std::vector<std::uint8_t> key_id(const Botan::Public_Key& key) {
  return Botan::Cert_Extension::Subject_Key_ID(key.subject_public_key(), "SHA-256").get_key_id();
}

Botan::X509_Time minute_ago() {
  return Botan::X509_Time(std::chrono::system_clock::now() - std::chrono::minutes(1));
}

Botan::X509_Certificate sign(const Botan::Private_Key& signer_key, const Botan::X509_DN& issuer,
                             const Botan::X509_DN& subject, const Botan::Public_Key& subject_key,
                             const Botan::Extensions& ext, const Botan::X509_Time& not_after,
                             Botan::RandomNumberGenerator& rng) {
  Botan::AlgorithmIdentifier sig_algo;
  std::unique_ptr<Botan::PK_Signer> signer(Botan::choose_sig_format(signer_key, rng, "SHA-256", sig_algo));
  return Botan::X509_CA::make_cert(signer.get(), rng, random_serial(rng), sig_algo,
                                   subject_key.subject_public_key(), minute_ago(), not_after, issuer, subject,
                                   ext);
}

std::string common_name(const Botan::X509_DN& dn) {
  const auto cns = dn.get_attribute("X520.CommonName");
  return cns.empty() ? std::string() : cns.front();
}

std::string sha256_hex(const std::vector<std::uint8_t>& data) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(data);
  return to_hex(h->final_stdvec());
}

// The 65-byte point of a P-256 key, or an empty vector for any other key.
Bytes p256_point(const Botan::Public_Key& key) {
  const auto* ec = dynamic_cast<const Botan::EC_PublicKey*>(&key);
  if (!ec || ec->domain() != Botan::EC_Group("secp256r1")) return {};
  return ec->public_point().encode(Botan::PointGFp::UNCOMPRESSED);
}

// The chip ID a vendor certificate names (HardwareModuleName in its SAN, as docs/design.md section 5).
std::optional<ChipId> named_chip(const Botan::X509_Certificate& cert) {
  if (!cert.v3_extensions().extension_set(kOidSan)) return std::nullopt;
  try {
    const auto ext = HardwareModuleNameExtension::from_der(cert.v3_extensions().get_extension_bits(kOidSan));
    if (ext.hw_serial().size() != kChipIdSize) return std::nullopt;
    return ChipId::from_bytes(ext.hw_serial().data(), ext.hw_serial().size());
  } catch (const Error&) {
    return std::nullopt;
  }
}

Botan::Key_Constraints role_usage(ChipKeyRole role) {
  return role == ChipKeyRole::Sd ? Botan::KEY_AGREEMENT : Botan::DIGITAL_SIGNATURE;
}
const char* role_name(ChipKeyRole role) { return role == ChipKeyRole::Sd ? "SD" : "attestation"; }

bool has_policy(const Botan::X509_Certificate& cert, const char* oid) {
  const auto policies = cert.certificate_policy_oids();
  return std::find(policies.begin(), policies.end(), Botan::OID(oid)) != policies.end();
}

const Botan::Path_Validation_Restrictions& restrictions() {
  static const Botan::Path_Validation_Restrictions r(false, 110);
  return r;
}

// A vendor CA as Botan's path validation saw it on its own (self-signature, strength, extensions):
// its key, parsed once. Only the time range changes between two chips, so only that is checked again.
struct VendorAnchor {
  std::shared_ptr<const Botan::X509_Certificate> cert;
  std::shared_ptr<const Botan::Public_Key> key;
};

// A vendor CA's own checks, done once per process and vendor certificate (docs/channel.md, "Cost": its
// self-signature was verified again for every chip, twice). Empty when the vendor CA does not pass on
// its own, or carries an extension that constrains the certificates below it (name constraints,
// policy constraints): those are checked by the full path validation only.
std::optional<VendorAnchor> vendor_anchor(const Botan::X509_Certificate& vendor) {
  static std::mutex mutex;
  static std::map<std::vector<std::uint8_t>, std::optional<VendorAnchor>> verified;
  const std::vector<std::uint8_t> der = vendor.BER_encode();
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = verified.find(der); it != verified.end()) return it->second;
  std::optional<VendorAnchor> anchor;
  const Botan::OID kBasic("2.5.29.19"), kUsage("2.5.29.15"), kSkid("2.5.29.14"), kAkid("2.5.29.35");
  const auto& oids = vendor.v3_extensions().get_extension_oids();
  const bool plain_ca = std::all_of(oids.begin(), oids.end(), [&](const Botan::OID& o) {
    return o == kBasic || o == kUsage || o == kSkid || o == kAkid;
  });
  if (plain_ca && vendor.is_CA_cert() && vendor.is_self_signed()) {
    const auto self = std::make_shared<const Botan::X509_Certificate>(vendor);
    // The time range is left to each chip's check (ignored here: a vendor CA not yet valid today is
    // remembered as sound, and refused per chip until it is).
    const auto status = Botan::PKIX::check_chain(
        {self}, vendor.not_before().to_std_timepoint(), "", Botan::Usage_Type::UNSPECIFIED,
        restrictions().minimum_key_strength(), restrictions().trusted_hashes());
    if (Botan::PKIX::overall_status(status) == Botan::Certificate_Status_Code::OK)
      anchor = VendorAnchor{self, std::shared_ptr<const Botan::Public_Key>(vendor.load_subject_public_key())};
  }
  verified.emplace(der, anchor);
  return anchor;
}

// RFC 5280 section 6.1.3 for a chip certificate issued directly by a vendor CA whose own checks are
// done (vendor_anchor): what Botan's PKIX::check_chain does for the first certificate of the path
// [leaf, vendor CA], in its order: names chain, serial, DN lengths, both time ranges, an issuing CA,
// the signature, its strength and hash, the leaf's extensions (unknown critical ones refused). Path length:
// no intermediate, so a vendor CA's path length 0 allows it. Returns the failure, or OK.
Botan::Certificate_Status_Code check_leaf(const Botan::X509_Certificate& leaf, const VendorAnchor& vendor,
                                          std::chrono::system_clock::time_point now) {
  using Code = Botan::Certificate_Status_Code;
  const Botan::X509_Certificate& ca = *vendor.cert;
  if (leaf.issuer_dn() != ca.subject_dn()) return Code::CHAIN_NAME_MISMATCH;
  if (leaf.is_serial_negative()) return Code::CERT_SERIAL_NEGATIVE;
  for (const auto& [oid, value] : leaf.subject_dn().dn_info()) {
    const std::size_t ub = Botan::X509_DN::lookup_ub(oid);
    if (ub > 0 && value.size() > ub) return Code::DN_TOO_LONG;
  }
  const Botan::X509_Time at(now);
  for (const Botan::X509_Certificate* c : {&leaf, &ca}) {
    if (at < c->not_before()) return Code::CERT_NOT_YET_VALID;
    if (at > c->not_after()) return Code::CERT_HAS_EXPIRED;
  }
  if (!ca.is_CA_cert() || !ca.allowed_usage(Botan::KEY_CERT_SIGN)) return Code::CA_CERT_NOT_FOR_CERT_ISSUER;
  const Code sig = leaf.verify_signature(*vendor.key);
  if (sig != Code::VERIFIED) return sig;
  if (vendor.key->estimated_strength() < restrictions().minimum_key_strength())
    return Code::SIGNATURE_METHOD_TOO_WEAK;
  if (restrictions().trusted_hashes().count(leaf.hash_used_for_signature()) == 0) return Code::UNTRUSTED_HASH;
  const Botan::Extensions& ext = leaf.v3_extensions();
  const auto list = ext.extensions();
  if (leaf.x509_version() < 3 && !list.empty()) return Code::EXT_IN_V1_V2_CERT;
  if (list.size() != ext.get_extension_oids().size()) return Code::DUPLICATE_CERT_EXTENSION;
  const std::vector<std::shared_ptr<const Botan::X509_Certificate>> path = {
      std::make_shared<const Botan::X509_Certificate>(leaf), vendor.cert};
  std::vector<std::set<Code>> status(path.size());
  for (const auto& e : list) e.first->validate(leaf, ca, path, status, 0);
  return status[0].empty() ? Code::OK : *status[0].begin();
}

// Path validation (RFC 5280 section 6 as Botan implements it) of leaf + intermediates to a vendor CA.
// Returns the vendor CA it chained to. A leaf straight under a listed vendor (keyline's chips: the
// store holds the SD certificate only) takes check_leaf with the vendor's own checks done once; any
// other path, and a leaf that fails there, goes through Botan's whole path validation, which then
// names the failure.
Botan::X509_Certificate validate_path(const std::vector<Botan::X509_Certificate>& path,
                                      const std::vector<Botan::X509_Certificate>& vendors, const ChipId& chip,
                                      const char* what) {
  const auto now = std::chrono::system_clock::now();
  if (path.size() == 1)
    for (const auto& v : vendors) {
      if (path.front().issuer_dn() != v.subject_dn()) continue;
      const auto anchor = vendor_anchor(v);
      if (anchor && check_leaf(path.front(), *anchor, now) == Botan::Certificate_Status_Code::OK) return v;
    }
  Botan::Certificate_Store_In_Memory store;
  for (const auto& v : vendors) store.add_certificate(v);
  const auto result =
      Botan::x509_path_validate(path, restrictions(), store, "", Botan::Usage_Type::UNSPECIFIED, now);
  if (!result.successful_validation())
    not_genuine(chip, std::string(what) + " certificate does not chain to a listed vendor (" +
                          result.result_string() + ")");
  return result.trust_root();
}

// One chip certificate's role: exactly its key usage, no CA, P-256; the attestation key also its policy.
Bytes check_role(const Botan::X509_Certificate& cert, ChipKeyRole role, const ChipId& chip) {
  if (cert.is_CA_cert()) not_genuine(chip, std::string(role_name(role)) + " certificate is a CA");
  if (cert.constraints() != role_usage(role))
    not_genuine(chip, std::string(role_name(role)) + " certificate carries the wrong key usage");
  if (role == ChipKeyRole::Attestation && !has_policy(cert, kAttestationPolicyOid))
    not_genuine(chip, "attestation certificate lacks the attestation policy");
  if (role == ChipKeyRole::Sd && has_policy(cert, kAttestationPolicyOid))
    not_genuine(chip, "SD certificate carries the attestation policy");
  const Bytes point = p256_point(*cert.load_subject_public_key());
  if (point.empty()) not_genuine(chip, std::string(role_name(role)) + " key is not P-256");
  const auto named = named_chip(cert);
  if (!named) not_genuine(chip, std::string(role_name(role)) + " certificate names no chip ID");
  if (*named != chip)
    throw Error(ErrorCode::ChipIdMismatch, "chip " + chip.str() + ": its " + role_name(role) +
                                               " certificate names chip " + named->str());
  return point;
}

std::vector<Botan::X509_Certificate> parse_ders(const std::vector<Bytes>& ders, const ChipId& chip) {
  std::vector<Botan::X509_Certificate> out;
  for (const auto& d : ders) {
    try {
      out.emplace_back(d);
    } catch (const std::exception&) {
      not_genuine(chip, "a certificate does not parse");
    }
  }
  return out;
}

std::uint32_t get_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

bool equal_ct(const Bytes& a, const Bytes& b) {
  if (a.size() != b.size()) return false;
  std::uint8_t d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d |= static_cast<std::uint8_t>(a[i] ^ b[i]);
  return d == 0;
}

}  // namespace

// --- vendor CA and chip certificates ------------------------------------------------------------

Botan::X509_Certificate make_vendor_ca(const Botan::Private_Key& key, const std::string& vendor_name,
                                       Botan::RandomNumberGenerator& rng) {
  Botan::X509_DN dn;
  dn.add_attribute("X520.Organization", vendor_name);
  dn.add_attribute("X520.CommonName", vendor_name);
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Basic_Constraints(true, 0), true);
  ext.add(
      new Botan::Cert_Extension::Key_Usage(Botan::Key_Constraints(Botan::KEY_CERT_SIGN | Botan::CRL_SIGN)),
      true);
  ext.add(new Botan::Cert_Extension::Subject_Key_ID(key_id(key)), false);
  const Botan::X509_Time not_after(std::chrono::system_clock::now() +
                                   std::chrono::hours(24 * 365 * kVendorYears));
  return sign(key, dn, dn, key, ext, not_after, rng);
}

Bytes issue_chip_certificate(const Botan::X509_Certificate& vendor_ca, const Botan::Private_Key& vendor_key,
                             const Botan::Public_Key& chip_key, ChipKeyRole role, const ChipId& chip,
                             const std::string& hw_type, Botan::RandomNumberGenerator& rng) {
  if (!vendor_ca.is_CA_cert()) throw Error(ErrorCode::CertificateLint, "vendor certificate is not a CA");
  if (p256_point(chip_key).empty()) throw Error(ErrorCode::CertificateLint, "chip keys are P-256");
  Botan::X509_DN subject;
  subject.add_attribute("X520.CommonName", common_name(vendor_ca.subject_dn()) + " chip " + chip.str());
  Botan::Extensions ext;
  ext.add(new Botan::Cert_Extension::Basic_Constraints(false), true);
  ext.add(new Botan::Cert_Extension::Key_Usage(role_usage(role)), true);
  if (role == ChipKeyRole::Attestation)
    ext.add(new Botan::Cert_Extension::Certificate_Policies(
                std::vector<Botan::OID>{Botan::OID(kAttestationPolicyOid)}),
            false);
  ext.add(new Botan::Cert_Extension::Subject_Key_ID(key_id(chip_key)), false);
  ext.add(new Botan::Cert_Extension::Authority_Key_ID(vendor_ca.subject_key_id()), false);
  ext.add(new HardwareModuleNameExtension(Botan::OID(hw_type), chip), false);
  // A chip certificate lives as long as its vendor CA: a chip is not re-certified in the field.
  return sign(vendor_key, vendor_ca.subject_dn(), subject, chip_key, ext, vendor_ca.not_after(), rng)
      .BER_encode();
}

// --- the station's check ------------------------------------------------------------------------

std::vector<Botan::X509_Certificate> load_vendor_list(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(ErrorCode::Config, "chip vendor list " + path + " cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  std::vector<Botan::X509_Certificate> vendors;
  try {
    vendors = parse_certificates_pem(text.str());
  } catch (const Error& e) {
    throw ConfigError(ErrorCode::Config, "chip vendor list " + path + ": " + e.what());
  }
  if (vendors.empty())
    throw ConfigError(ErrorCode::Config, "chip vendor list " + path + " holds no certificate");
  for (const auto& v : vendors)
    if (!v.is_CA_cert())
      throw ConfigError(ErrorCode::Config, "chip vendor list " + path + ": " + common_name(v.subject_dn()) +
                                               " is not a CA certificate");
  return vendors;
}

VerifiedChip verify_chip(const std::vector<Bytes>& store, const Bytes& attestation_der,
                         const std::vector<Botan::X509_Certificate>& vendors, const ChipId& cplc_chip) {
  if (store.empty()) not_genuine(cplc_chip, "its certificate store is empty");
  // Botan wants the leaf first; the store has it last (GP Amendment F section 7.4.2 order).
  auto sd_path = parse_ders(std::vector<Bytes>(store.rbegin(), store.rend()), cplc_chip);
  auto att = parse_ders({attestation_der}, cplc_chip);
  std::vector<Botan::X509_Certificate> att_path = att;
  att_path.insert(att_path.end(), sd_path.begin() + 1, sd_path.end());

  const auto sd_root = validate_path(sd_path, vendors, cplc_chip, "SD");
  const auto att_root = validate_path(att_path, vendors, cplc_chip, "attestation");
  // Both keys of one chip come from one vendor: a second vendor's attestation key is another chip.
  if (sd_root != att_root)
    not_genuine(cplc_chip, "SD and attestation certificates come from different vendors");
  VerifiedChip out;
  out.sd_public_point = check_role(sd_path.front(), ChipKeyRole::Sd, cplc_chip);
  out.attestation_public_point = check_role(att.front(), ChipKeyRole::Attestation, cplc_chip);
  out.vendor = common_name(sd_root.subject_dn());
  out.vendor_ca_sha256 = sha256_hex(sd_root.BER_encode());
  return out;
}

// --- GENERATE KEY ---------------------------------------------------------------------------------

CommandApdu generate_key_command(KeyKind kind, const Bytes& challenge, const Bytes& context_hash) {
  if (challenge.size() != kChallengeSize || context_hash.size() != kContextSize)
    throw Error(ErrorCode::Usage, "GENERATE KEY takes a 32-byte challenge and a 32-byte context hash");
  CommandApdu c;
  c.cla = 0x80;
  c.ins = kInsGenerateKey;
  c.p1 = static_cast<std::uint8_t>(kind);
  c.p2 = 0x00;
  c.data.assign(challenge.begin(), challenge.end());
  c.data.insert(c.data.end(), context_hash.begin(), context_hash.end());
  c.le = 256;
  return c;
}

Bytes context_hash(const ChipId& chip, const std::string& imei, const std::string& station_id,
                   std::int64_t claim_id) {
  if (imei.size() != 15) throw Error(ErrorCode::BadImei, "attestation context: IMEI must be 15 digits");
  if (station_id.size() > 255)
    throw Error(ErrorCode::Usage, "attestation context: station id longer than 255 bytes");
  Bytes m;
  const std::string label = "keyline attest context v1";
  m.insert(m.end(), label.begin(), label.end());
  m.insert(m.end(), chip.bytes().begin(), chip.bytes().end());
  m.insert(m.end(), imei.begin(), imei.end());
  m.push_back(static_cast<std::uint8_t>(station_id.size()));
  m.insert(m.end(), station_id.begin(), station_id.end());
  const auto id = static_cast<std::uint64_t>(claim_id);
  for (int shift = 56; shift >= 0; shift -= 8) m.push_back(static_cast<std::uint8_t>(id >> shift));
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  h->update(m);
  return h->final_stdvec();
}

Bytes encode_statement(const Statement& s) {
  const std::size_t key_len = s.kind == KeyKind::Identity ? kP256PointSize : kX25519Size;
  const std::uint8_t usage = s.kind == KeyKind::Identity ? 0x01 : 0x02;
  if (s.kind != KeyKind::Identity && s.kind != KeyKind::Transport) bad_statement("unknown key kind");
  if (s.public_key.size() != key_len || s.usage != usage || s.challenge.size() != kChallengeSize ||
      s.context.size() != kContextSize)
    bad_statement("a field has the wrong size or value");
  Bytes out(kMagic, kMagic + 4);
  out.push_back(kStatementVersion);
  out.insert(out.end(), s.chip.bytes().begin(), s.chip.bytes().end());
  out.push_back(static_cast<std::uint8_t>(s.kind));
  out.push_back(s.usage);
  out.push_back(static_cast<std::uint8_t>(s.public_key.size()));
  out.insert(out.end(), s.public_key.begin(), s.public_key.end());
  out.insert(out.end(), s.challenge.begin(), s.challenge.end());
  out.insert(out.end(), s.context.begin(), s.context.end());
  put_u32(out, s.counter);
  return out;
}

Statement parse_statement(const std::uint8_t* data, std::size_t len) {
  constexpr std::size_t fixed = 4 + 1 + kChipIdSize + 1 + 1 + 1;
  if (len < fixed || std::memcmp(data, kMagic, 4) != 0) bad_statement("no KLAT header");
  if (data[4] != kStatementVersion) bad_statement("unknown version " + std::to_string(data[4]));
  Statement s;
  s.chip = ChipId::from_bytes(data + 5, kChipIdSize);
  const std::uint8_t kind = data[15];
  s.usage = data[16];
  const std::size_t key_len = data[17];
  if (kind == 0x01 && (s.usage != 0x01 || key_len != kP256PointSize)) bad_statement("identity key malformed");
  if (kind == 0x02 && (s.usage != 0x02 || key_len != kX25519Size)) bad_statement("transport key malformed");
  if (kind != 0x01 && kind != 0x02) bad_statement("unknown key kind");
  s.kind = static_cast<KeyKind>(kind);
  if (len != fixed + key_len + kChallengeSize + kContextSize + 4) bad_statement("wrong length");
  const std::uint8_t* p = data + fixed;
  if (s.kind == KeyKind::Identity && p[0] != 0x04) bad_statement("identity key is not an uncompressed point");
  s.public_key.assign(p, p + key_len);
  p += key_len;
  s.challenge.assign(p, p + kChallengeSize);
  p += kChallengeSize;
  s.context.assign(p, p + kContextSize);
  p += kContextSize;
  s.counter = get_u32(p);
  return s;
}

Bytes encode_signed_statement(const SignedStatement& s) {
  if (s.statement.empty() || s.statement.size() > 0xFFFF || s.signature.empty() ||
      s.signature.size() > kMaxSignature)
    bad_statement("signed statement fields out of range");
  Bytes out;
  put_u16(out, static_cast<std::uint16_t>(s.statement.size()));
  out.insert(out.end(), s.statement.begin(), s.statement.end());
  out.insert(out.end(), s.signature.begin(), s.signature.end());
  return out;
}

SignedStatement parse_signed_statement(const std::uint8_t* data, std::size_t len) {
  if (len < 2) bad_statement("signed statement too short");
  const std::size_t n = (std::size_t{data[0]} << 8) | data[1];
  if (n == 0 || n > len - 2) bad_statement("statement length runs past the answer");
  const std::size_t sig_len = len - 2 - n;
  if (sig_len == 0 || sig_len > kMaxSignature) bad_statement("signature missing or too long");
  SignedStatement s;
  s.statement.assign(data + 2, data + 2 + n);
  s.signature.assign(data + 2 + n, data + len);
  return s;
}

SignedStatement sign_statement(const Statement& s, const Botan::Private_Key& attestation_key,
                               Botan::RandomNumberGenerator& rng) {
  SignedStatement out;
  out.statement = encode_statement(s);
  Botan::PK_Signer signer(attestation_key, rng, kSigAlgo, Botan::DER_SEQUENCE);
  out.signature = signer.sign_message(out.statement, rng);
  return out;
}

Statement verify_statement(const SignedStatement& signed_statement, const VerifiedChip& chip,
                           const ChipId& chip_id, KeyKind kind, const Bytes& challenge, const Bytes& context,
                           std::uint32_t last_counter) {
  bool valid = false;
  try {
    const Botan::EC_Group p256("secp256r1");
    const Botan::ECDSA_PublicKey key(p256, p256.OS2ECP(chip.attestation_public_point));
    Botan::PK_Verifier verifier(key, kSigAlgo, Botan::DER_SEQUENCE);
    valid = verifier.verify_message(signed_statement.statement, signed_statement.signature);
  } catch (const std::exception&) {
    valid = false;
  }
  if (!valid)
    throw Error(ErrorCode::BadAttestation,
                "chip " + chip_id.str() + ": attestation signature does not verify");
  Statement s;
  try {
    s = parse_statement(signed_statement.statement.data(), signed_statement.statement.size());
  } catch (const FormatError& e) {
    throw Error(ErrorCode::BadAttestation, "chip " + chip_id.str() + ": " + e.what());
  }
  const auto mismatch = [&](const std::string& what) {
    throw Error(ErrorCode::AttestationMismatch, "chip " + chip_id.str() + ": attestation statement " + what);
  };
  if (s.chip != chip_id) mismatch("names chip " + s.chip.str());
  if (s.kind != kind) mismatch("is for another key type");
  if (!equal_ct(s.challenge, challenge)) mismatch("answers another challenge");
  if (!equal_ct(s.context, context)) mismatch("answers another context");
  if (s.counter <= last_counter)
    mismatch("counter " + std::to_string(s.counter) + " has not grown past " + std::to_string(last_counter));
  return s;
}

}  // namespace keyline::core::chip
