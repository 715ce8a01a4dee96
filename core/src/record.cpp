#include "keyline/core/record.h"

#include <chrono>
#include <memory>
#include <sstream>
#include <string>

#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <botan/asn1_time.h>
#include <botan/ecc_key.h>
#include <botan/hash.h>
#include <botan/pem.h>
#include <botan/x509_ext.h>

#include "keyline/core/backup_package.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/http.h"

namespace keyline::core {

namespace {

constexpr std::uint8_t kRecordHashVersion = 1;
// A record is a backup package and a short chain: anything near this is not a record.
constexpr std::size_t kMaxRecordJson = 4u << 20;
constexpr std::size_t kMaxJsonDepth = 8;
constexpr std::size_t kMaxCertificates = 16;

[[noreturn]] void bad(const std::string& what) { throw FormatError(ErrorCode::BadRecord, "record: " + what); }

// By value: Object::get returns a copy of the Var, so a reference into it would dangle.
std::string get_string(const Poco::JSON::Object& obj, const std::string& key) {
  if (!obj.has(key)) bad("missing \"" + key + "\"");
  const Poco::Dynamic::Var v = obj.get(key);
  if (!v.isString()) bad("\"" + key + "\" is not a string");
  return v.extract<std::string>();
}

}  // namespace

std::string Record::hash() const {
  if (certificates.size() > 0xFFFF) bad("too many certificates");
  Bytes enc = {'K', 'L', 'R', 'C', kRecordHashVersion};
  enc.insert(enc.end(), chip_id.bytes().begin(), chip_id.bytes().end());
  enc.insert(enc.end(), imei.str().begin(), imei.str().end());
  put_u32(enc, static_cast<std::uint32_t>(backup.size()));
  enc.insert(enc.end(), backup.begin(), backup.end());
  put_u16(enc, static_cast<std::uint16_t>(certificates.size()));
  for (const auto& der : certificates) {
    put_u32(enc, static_cast<std::uint32_t>(der.size()));
    enc.insert(enc.end(), der.begin(), der.end());
  }
  auto sha = Botan::HashFunction::create_or_throw("SHA-256");
  sha->update(enc);
  return to_hex(sha->final_stdvec());
}

namespace {

// A JSON string as Poco::JSON 1.11 writes it ('"', '\\' and \n \r \t escaped, '/' not), for the
// printable ASCII a record's fields hold: http::json_escape escapes that set the same way. Returns
// false on any other character: the caller then lets Poco write the whole object.
bool append_json_string(std::string& out, const std::string& s) {
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\n' && c != '\r' && c != '\t') || c > 0x7E) return false;
  }
  out += '"';
  out += http::json_escape(s);
  out += '"';
  return true;
}

std::string to_json_poco(const Record& r, const std::string& hash, const std::string& published_at) {
  Poco::JSON::Object obj(Poco::JSON_PRESERVE_KEY_ORDER);
  obj.set("chip_id", r.chip_id.str());
  obj.set("imei", r.imei.str());
  obj.set("backup", to_base64(r.backup));
  Poco::JSON::Array certs;
  for (const auto& der : r.certificates) certs.add(Botan::PEM_Code::encode(der, "CERTIFICATE"));
  obj.set("certificates", certs);
  obj.set("record_hash", hash);
  if (!published_at.empty()) obj.set("published_at", published_at);
  std::ostringstream out;
  obj.stringify(out);
  return out.str();
}

}  // namespace

std::string Record::to_json(const std::string& published_at) const { return to_json_hashed(hash(), published_at); }

std::string Record::to_json_hashed(const std::string& record_hash, const std::string& published_at) const {
  // Written directly: Poco::JSON makes a Var per field and one ostream write per character of the
  // ~4 KB body, which on a line was a visible share of the station's and the public DB's CPU. The
  // bytes are Poco's (unit test), and anything a record's typed fields cannot hold goes to Poco.
  const std::string b64 = to_base64(backup);
  std::string out;
  out.reserve(256 + b64.size() + certificates.size() * 1024);
  bool ok = true;
  out += "{\"chip_id\":";
  ok = ok && append_json_string(out, chip_id.str());
  out += ",\"imei\":";
  ok = ok && append_json_string(out, imei.str());
  out += ",\"backup\":";
  ok = ok && append_json_string(out, b64);
  out += ",\"certificates\":[";
  for (std::size_t i = 0; i < certificates.size(); ++i) {
    if (i) out += ',';
    ok = ok && append_json_string(out, Botan::PEM_Code::encode(certificates[i], "CERTIFICATE"));
  }
  out += "],\"record_hash\":";
  ok = ok && append_json_string(out, record_hash);
  if (!published_at.empty()) {
    out += ",\"published_at\":";
    ok = ok && append_json_string(out, published_at);
  }
  out += '}';
  return ok ? out : to_json_poco(*this, record_hash, published_at);
}

Record Record::from_json(const std::string& json, std::string* hash) {
  if (json.size() > kMaxRecordJson) bad("JSON larger than 4 MiB");
  Poco::JSON::Object::Ptr obj;
  try {
    Poco::JSON::Parser parser;
    parser.setDepth(kMaxJsonDepth);
    const Poco::Dynamic::Var root = parser.parse(json);
    if (root.type() != typeid(Poco::JSON::Object::Ptr)) bad("JSON is not an object");
    obj = root.extract<Poco::JSON::Object::Ptr>();
  } catch (const Poco::Exception& e) {
    bad("JSON does not parse: " + e.displayText());
  } catch (const std::exception& e) {
    // Poco's parser can surface std exceptions (bad_cast, out_of_range) on odd input.
    bad(std::string("JSON does not parse: ") + e.what());
  }
  if (obj.isNull()) bad("JSON is not an object");

  Record r;
  try {
    r.chip_id = ChipId::parse(get_string(*obj, "chip_id"));
  } catch (const FormatError& e) {
    if (e.code() == ErrorCode::BadRecord) throw;
    bad(std::string("\"chip_id\": ") + e.what());
  }
  if (!ChipId::is_valid(get_string(*obj, "chip_id"))) bad("\"chip_id\" must be 20 upper-case hex digits");
  try {
    r.imei = Imei::parse(get_string(*obj, "imei"));
  } catch (const FormatError& e) {
    if (e.code() == ErrorCode::BadRecord) throw;
    bad(std::string("\"imei\": ") + e.what());
  }
  try {
    r.backup = from_base64(get_string(*obj, "backup"));
  } catch (const FormatError& e) {
    if (e.code() == ErrorCode::BadRecord) throw;
    bad(std::string("\"backup\": ") + e.what());
  }

  if (!obj->has("certificates")) bad("missing \"certificates\"");
  const Poco::JSON::Array::Ptr certs = obj->getArray("certificates");
  if (certs.isNull()) bad("\"certificates\" is not an array");
  if (certs->size() == 0) bad("\"certificates\" is empty");
  if (certs->size() > kMaxCertificates) bad("more than 16 certificates");
  for (std::size_t i = 0; i < certs->size(); ++i) {
    const Poco::Dynamic::Var v = certs->get(static_cast<unsigned>(i));
    if (!v.isString()) bad("certificate " + std::to_string(i) + " is not a string");
    try {
      const auto der = Botan::PEM_Code::decode_check_label(v.extract<std::string>(), "CERTIFICATE");
      if (der.empty()) bad("certificate " + std::to_string(i) + " is empty");
      r.certificates.emplace_back(der.begin(), der.end());
    } catch (const Botan::Exception&) {
      bad("certificate " + std::to_string(i) + " is not a PEM CERTIFICATE");
    }
  }

  // The hash is derived, not data: when present it must agree, so a copy that lost a byte is caught.
  std::string computed;
  if (obj->has("record_hash")) {
    const std::string h = get_string(*obj, "record_hash");
    computed = r.hash();
    if (h != computed) bad("\"record_hash\" does not match the record's content");
  }
  if (obj->has("published_at") && !obj->get("published_at").isString()) bad("\"published_at\" is not a string");
  if (hash) *hash = computed.empty() ? r.hash() : std::move(computed);
  return r;
}

namespace {

[[noreturn]] void bad_transport(const std::string& what) {
  throw FormatError(ErrorCode::BadTransportCertificate, "record: transport certificate " + what);
}

// X25519 (RFC 8410 section 3) and how far ahead of this clock a station's notBefore may lie.
const Botan::OID kOidX25519("1.3.101.110");
constexpr std::chrono::hours kClockSkew(24);

// The cA flag itself: Botan's is_CA_cert() also wants keyCertSign.
bool says_ca(const Botan::X509_Certificate& cert) {
  const auto* bc = cert.v3_extensions().get_extension_object_as<Botan::Cert_Extension::Basic_Constraints>();
  return bc && bc->get_is_ca();
}

bool signed_by_fresh_key(const Botan::X509_Certificate& cert, const Botan::X509_Certificate& device_ca) {
  try {
    const std::unique_ptr<Botan::Public_Key> key(device_ca.subject_public_key());
    return cert.verify_signature(*key) == Botan::Certificate_Status_Code::VERIFIED;
  } catch (const Botan::Exception&) {
    return false;
  }
}

void check_transport_fields(const Record& record, const Botan::X509_Certificate& identity,
                            const Botan::X509_Certificate& transport, const Botan::X509_Certificate& device_ca,
                            const SignedByDeviceCa& signed_by) {
  if (!(transport.issuer_dn() == identity.issuer_dn())) bad_transport("issuer differs from the identity certificate's");
  const bool signed_ok = device_ca.subject_dn() == transport.issuer_dn() &&
                         (signed_by ? signed_by(transport) : signed_by_fresh_key(transport, device_ca));
  if (!signed_ok) bad_transport("is not signed by the Device CA");
  if (!(transport.subject_public_key_algo().get_oid() == kOidX25519) ||
      transport.subject_public_key_bitstring().size() != 32)
    bad_transport("key is not X25519");
  if (transport.constraints() != Botan::KEY_AGREEMENT) bad_transport("keyUsage is not exactly keyAgreement");
  if (says_ca(transport)) bad_transport("is a CA certificate");
  const IdentityFacts facts = [&] {
    try {
      return read_identity(transport);
    } catch (const FormatError& e) {
      bad_transport(std::string("names no chip ID and IMEI: ") + e.what());
    }
  }();
  if (facts.chip_id != record.chip_id)
    bad_transport("chip ID " + facts.chip_id.str() + " differs from record chip ID " + record.chip_id.str());
  if (facts.imei != record.imei)
    bad_transport("IMEI " + facts.imei.str() + " differs from record IMEI " + record.imei.str());
  const auto now = std::chrono::system_clock::now();
  if (!(Botan::X509_Time(now) < transport.not_after()) || Botan::X509_Time(now + kClockSkew) < transport.not_before())
    bad_transport("is not valid now");
}

// Botan decodes lazily in places (an extension of an unexpected type): any of its errors is this
// certificate not decoding, a typed error like the rest.
void check_transport(const Record& record, const Botan::X509_Certificate& identity,
                     const Botan::X509_Certificate& transport, const Botan::X509_Certificate& device_ca,
                     const SignedByDeviceCa& signed_by = nullptr) {
  try {
    check_transport_fields(record, identity, transport, device_ca, signed_by);
  } catch (const Botan::Exception& e) {
    bad_transport(std::string("does not decode: ") + e.what());
  }
}

// The shapes the station publishes (station/src/flow_steps.cpp, then the transport certificate third):
// [identity], [identity, Device CA] or [identity, Device CA, transport]. Every reader takes the issuer
// second and the transport certificate third, so a record of another order or with extra certificates
// would let readers disagree on what it says: it is refused.
void check_shape(const std::vector<Botan::X509_Certificate>& chain) {
  if (chain.size() > 3) bad("more than 3 certificates: [identity, Device CA, transport] at most");
  if (chain.size() >= 2 && (!chain[1].is_CA_cert() || !(chain[0].issuer_dn() == chain[1].subject_dn())))
    bad("the second certificate is not the CA that issued the identity certificate");
  if (chain.size() == 3 && chain[2].is_CA_cert()) bad("the third certificate is a CA certificate, not a transport certificate");
}

// The identity certificate's profile (core/cert_profile.h): an ECDSA P-256 signing key, not the
// X25519 keyAgreement key of a transport certificate standing in for it.
void check_identity_profile(const Botan::X509_Certificate& leaf) {
  std::unique_ptr<Botan::Public_Key> key;
  try {
    key.reset(leaf.subject_public_key());
  } catch (const Botan::Exception&) {
    bad("identity certificate key does not decode");
  }
  const auto* ec = dynamic_cast<const Botan::EC_PublicKey*>(key.get());
  if (!ec || key->algo_name() != "ECDSA" || ec->domain().get_curve_oid() != Botan::OID::from_string("secp256r1"))
    bad("identity certificate key is not ECDSA P-256");
  const Botan::Key_Constraints usage = leaf.constraints();
  if (leaf.is_CA_cert() || !(usage & Botan::DIGITAL_SIGNATURE) || (usage & Botan::KEY_AGREEMENT))
    bad("identity certificate keyUsage is not digitalSignature without keyAgreement");
}

// verify_chain may have found the leaf's issuer among the anchors (one of the same DN as the second
// certificate): the transport check trusts the second certificate's key, so it must be the one that
// signed the leaf.
void check_second_issued_leaf(const std::vector<Botan::X509_Certificate>& chain) {
  if (chain.size() < 2) return;
  try {
    const std::unique_ptr<Botan::Public_Key> key(chain[1].subject_public_key());
    if (chain[0].verify_signature(*key) == Botan::Certificate_Status_Code::VERIFIED) return;
  } catch (const Botan::Exception&) {
  }
  bad("the second certificate is not the CA that issued the identity certificate");
}

}  // namespace

std::optional<Botan::X509_Certificate> transport_certificate(const Record& record) {
  std::optional<Botan::X509_Certificate> found;
  for (std::size_t i = 1; i < record.certificates.size(); ++i) {
    std::optional<Botan::X509_Certificate> cert;
    try {
      cert.emplace(record.certificates[i]);
    } catch (const Botan::Exception&) {
      throw FormatError(ErrorCode::BadCertificate, "record: certificate " + std::to_string(i) + " is not DER X.509");
    }
    if (cert->is_CA_cert()) continue;
    // Two would leave readers to choose: one rule for all of them is to refuse the record.
    if (found) bad_transport("is not the only end-entity certificate after the identity certificate");
    found = std::move(cert);
  }
  return found;
}

void check_transport_certificate(const Record& record, const Botan::X509_Certificate& device_ca) {
  if (record.certificates.empty()) bad_transport("is missing: the record has no certificates");
  std::optional<Botan::X509_Certificate> identity;
  try {
    identity.emplace(record.certificates.front());
  } catch (const Botan::Exception&) {
    throw FormatError(ErrorCode::BadCertificate, "record: certificate 0 is not DER X.509");
  }
  const auto transport = transport_certificate(record);
  if (!transport) bad_transport("is missing: the record has none");
  check_transport(record, *identity, *transport, device_ca);
}

void check_transport_certificate(const Record& record, const Botan::X509_Certificate& identity,
                                 const Botan::X509_Certificate& transport, const Botan::X509_Certificate& device_ca,
                                 const SignedByDeviceCa& signed_by) {
  check_transport(record, identity, transport, device_ca, signed_by);
}

void validate_record(const Record& record, const std::vector<Botan::X509_Certificate>& trust_anchors) {
  if (record.certificates.empty()) bad("no certificates");
  std::vector<Botan::X509_Certificate> chain;
  for (std::size_t i = 0; i < record.certificates.size(); ++i) {
    try {
      chain.emplace_back(record.certificates[i]);
    } catch (const Botan::Exception&) {
      throw FormatError(ErrorCode::BadCertificate, "record: certificate " + std::to_string(i) + " is not DER X.509");
    }
  }
  check_shape(chain);
  const Botan::X509_Certificate& leaf = chain.front();
  // Only the Device CA (second) may issue the leaf: the transport certificate is no intermediate.
  const std::vector<Botan::X509_Certificate> intermediates(chain.begin() + (chain.size() > 1 ? 1 : 0),
                                                           chain.begin() + (chain.size() > 1 ? 2 : 0));
  try {
    verify_chain(leaf, intermediates, trust_anchors);
  } catch (const Error& e) {
    throw Error(ErrorCode::ChainInvalid, std::string("chain does not lead to a trusted root: ") + e.what());
  } catch (const std::exception& e) {
    throw Error(ErrorCode::ChainInvalid, std::string("chain does not lead to a trusted root: ") + e.what());
  }

  check_second_issued_leaf(chain);
  check_record_facts(record, leaf);
  if (chain.size() == 3) check_transport(record, leaf, chain[2], chain[1]);
}

void check_record_facts(const Record& record, const Botan::X509_Certificate& leaf) {
  check_identity_profile(leaf);
  const IdentityFacts facts = read_identity(leaf);
  if (facts.chip_id != record.chip_id)
    bad("certificate chip ID " + facts.chip_id.str() + " differs from record chip ID " + record.chip_id.str());
  if (facts.imei != record.imei)
    bad("certificate IMEI " + facts.imei.str() + " differs from record IMEI " + record.imei.str());

  const BackupHeader header = parse_backup_header(record.backup);
  if (header.chip_id != record.chip_id)
    throw FormatError(ErrorCode::BadBackupPackage, "backup package names chip " + header.chip_id.str() +
                                                       ", record names chip " + record.chip_id.str());
}

}  // namespace keyline::core
