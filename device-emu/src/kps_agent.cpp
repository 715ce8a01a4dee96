#include "keyline/device/kps_agent.h"

#include <fcntl.h>
#include <unistd.h>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <botan/data_src.h>
#include <botan/pkcs8.h>
#include <botan/system_rng.h>
#include <botan/x509_key.h>

#include <cerrno>
#include <ctime>
#include <functional>
#include <optional>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <regex>

#include "keyline/core/cert_profile.h"
#include "keyline/core/data_package.h"
#include "keyline/core/device_auth.h"
#include "keyline/core/flash_image.h"
#include "keyline/core/hpke.h"
#include "keyline/core/http.h"
#include "keyline/core/http_signature.h"
#include "keyline/core/kps_envelope.h"
#include "keyline/device/chip.h"
#include "kps_session.h"

namespace keyline::device {

namespace {

constexpr std::size_t kUserKeySize = 32;

void check_label(const std::string& label) {
  static const std::regex re("^[A-Za-z0-9._-]{1,64}$");
  if (!std::regex_match(label, re)) throw core::Error(error::BadLabel, "a key label is 1-64 of A-Z a-z 0-9 . _ -");
}

// Read straight into SecureBytes: a key never passes through a std::string.
std::optional<core::SecureBytes> read_secret(const fs::path& path, std::size_t max) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    throw core::IoError(core::ErrorCode::Io, "cannot read " + path.string());
  }
  core::SecureBytes out = read_secret_fd(fd, max);
  if (out.size() > max) throw core::IoError(core::ErrorCode::Io, path.string() + " is larger than a key");
  return out;
}

bool is_uuid(const std::string& s) {
  static const std::regex re("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$");
  return std::regex_match(s, re);
}

// A 4xx/5xx answer becomes Error(Http) with the problem document's detail (exit 5, "refused").
void expect(const core::http::Response& r, int status, const std::string& what) {
  if (r.status == status) return;
  std::string detail;
  try {
    Poco::JSON::Parser p;
    detail = p.parse(r.body).extract<Poco::JSON::Object::Ptr>()->optValue<std::string>("detail", "");
  } catch (const std::exception&) {
  }
  throw core::Error(core::ErrorCode::Http,
                    what + ": KPS answered " + std::to_string(r.status) + (detail.empty() ? "" : " (" + detail + ")"));
}

Poco::JSON::Object::Ptr parse_object(const std::string& body) {
  try {
    Poco::JSON::Parser p;
    return p.parse(body).extract<Poco::JSON::Object::Ptr>();
  } catch (const std::exception&) {
    throw core::Error(error::KpsProtocol, "the KPS answered with something that is not a JSON object");
  }
}

std::string str(const Poco::JSON::Object::Ptr& o, const char* name) {
  if (!o || !o->has(name) || !o->get(name).isString())
    throw core::Error(error::KpsProtocol, std::string("the KPS answer lacks ") + name);
  return o->getValue<std::string>(name);
}

// The source's own check of the transport key information (S2/S3): the certificate chains to this
// device's ROM root, is an X25519 key-agreement certificate and names the requesting chip. The KPS
// checked it too, but the source trusts only its ROM.
core::Bytes target_transport_key(const kps::DeviceKeys& k, const std::string& chain_pem, const core::ChipId& target) {
  try {
    const auto certs = core::parse_certificates_pem(chain_pem);
    if (certs.empty()) throw core::CryptoError(core::ErrorCode::Crypto, "no certificate");
    core::verify_chain(certs[0], {certs.begin() + 1, certs.end()}, k.roots);
    std::unique_ptr<Botan::Public_Key> pub(certs[0].subject_public_key());
    if (pub->algo_name() != "Curve25519") throw core::CryptoError(core::ErrorCode::Crypto, "not an X25519 key");
    if (!certs[0].allowed_usage(Botan::Key_Constraints::KEY_AGREEMENT))
      throw core::CryptoError(core::ErrorCode::Crypto, "keyUsage lacks keyAgreement");
    if (core::read_identity(certs[0]).chip_id != target)
      throw core::CryptoError(core::ErrorCode::Crypto, "the certificate names another chip");
    const auto bits = certs[0].subject_public_key_bitstring();
    if (bits.size() != core::hpke::kPublicKeySize) throw core::CryptoError(core::ErrorCode::Crypto, "bad key size");
    return core::Bytes(bits.begin(), bits.end());
  } catch (const std::exception& e) {
    throw core::Error(core::ErrorCode::ChainInvalid, "target transport certificate refused: " + std::string(e.what()));
  }
}

std::string kcv_hex(const core::SecureBytes& key) { return core::to_hex(core::key_check_value(key)); }

// D/secure/kps-requests/ID: "SOURCE LABEL", written by `kps request`, so the target checks a delivered
// envelope against what it asked for, not only against what the KPS says the transfer is.
fs::path request_record(const fs::path& dir, const std::string& id) { return dir / "secure" / "kps-requests" / id; }

void write_request_record(const fs::path& dir, const std::string& id, const std::string& source,
                          const std::string& label) {
  if (!is_uuid(id)) throw core::Error(error::KpsProtocol, "the KPS gave a transfer id that is not a UUID");
  const auto path = request_record(dir, id);
  fs::create_directories(path.parent_path());
  const std::string line = source + " " + label + "\n";
  write_atomic(path, reinterpret_cast<const std::uint8_t*>(line.data()), line.size(), std::nullopt, 0600);
}

void check_request_record(const fs::path& dir, const std::string& id, const std::string& source,
                          const std::string& label) {
  const auto rec = read_bytes(request_record(dir, id), 256);
  if (!rec) return;  // an owner's transfer (group): nothing asked locally; the source's signature decides
  if (std::string(rec->begin(), rec->end()) != source + " " + label + "\n")
    throw core::CryptoError(core::ErrorCode::Crypto, "transfer " + id + " is not what this device asked for");
}

// The transfer a notice is about, read from the KPS; it must name this device in `role`.
Poco::JSON::Object::Ptr own_transfer(kps::Session& s, const kps::DeviceKeys& keys, const kps::Notice& n,
                                     const char* role) {
  const auto r = s.get("/v1/transfers/" + n.transfer_id);
  expect(r, 200, "transfer " + n.transfer_id);
  auto t = parse_object(r.body);
  if (str(t, role) != keys.chip_id.str() || str(t, "id") != n.transfer_id)
    throw core::Error(error::KpsProtocol, "the KPS sent a transfer that is not this device's");
  return t;
}

std::string serve(kps::Session& s, const kps::DeviceKeys& keys, const KpsClientConfig& c, const kps::Notice& n) {
  const auto t = own_transfer(s, keys, n, "source");
  if (str(t, "state") != "requested") return "skipped";
  const std::string label = str(t, "label");
  check_label(label);
  const auto target = core::ChipId::parse(str(t, "target"));
  // The source's own access control comes before it looks at the transport key: the KPS cannot
  // widen what this device gives away.
  if (!device_policy_allows(c.dir, target, label)) {
    std::cout << "refused " << n.transfer_id << " " << label << " to " << target.str()
              << ": not allowed by " << (fs::path(c.dir) / "secure" / "kps-policy").string() << std::endl;
    return "refused";
  }
  const auto pk = target_transport_key(keys, str(t, "transport_certificates"), target);
  const auto key = load_user_key(c.dir, label);
  Botan::System_RNG rng;
  const auto envelope = core::kps_envelope::build({n.transfer_id, label, keys.chip_id, target}, pk, key,
                                                  keys.chain_der,
                                                  core::kps_envelope::botan_identity_signer(*keys.identity_key, rng));
  const auto up = s.post("/v1/transfers/" + n.transfer_id + "/key", std::string(envelope.begin(), envelope.end()),
                         "application/octet-stream");
  expect(up, 200, "deliver " + n.transfer_id);
  std::cout << "delivered " << n.transfer_id << " " << label << " to " << target.str() << std::endl;
  return "delivered";
}

std::string receive(kps::Session& s, const kps::DeviceKeys& keys, const KpsClientConfig& c, const kps::Notice& n) {
  const auto t = own_transfer(s, keys, n, "target");
  if (str(t, "state") != "delivered") return "skipped";
  const std::string path = "/v1/transfers/" + n.transfer_id;
  const std::string label = str(t, "label");
  check_label(label);
  const auto source = core::ChipId::parse(str(t, "source"));
  check_request_record(c.dir, n.transfer_id, source.str(), label);
  const auto k = s.get(path + "/key");
  expect(k, 200, "fetch " + n.transfer_id);
  const auto envelope = core::kps_envelope::parse(reinterpret_cast<const std::uint8_t*>(k.body.data()), k.body.size());
  const auto key = core::kps_envelope::verify_and_open(envelope, {n.transfer_id, label, source, keys.chip_id},
                                                       keys.roots, keys.pkg.transport_key);
  if (key.size() != kUserKeySize) throw core::Error(error::KpsProtocol, "the transferred key is not 32 bytes");
  store_user_key(c.dir, label, key);
  // Acknowledge only once the key is durable here: the KPS deletes its copy on this answer.
  expect(s.post(path + "/ack", "", "application/json"), 200, "acknowledge " + n.transfer_id);
  fs::remove(request_record(c.dir, n.transfer_id));
  std::cout << "received " << n.transfer_id << " " << label << " from " << source.str() << " kcv " << kcv_hex(key)
            << std::endl;
  return "received";
}

// Run `handle` on every pending notice; returns how many ended in `counted`. One transfer that fails
// does not stop the others: the first failure is rethrown at the end, and its notice stays.
int one_pass(const KpsClientConfig& c, unsigned roles, const std::string& counted) {
  const auto keys = kps::open_device(c.dir);
  kps::Session s(c, keys);
  int n_counted = 0;
  std::optional<core::Error> first;
  for (const auto& n : kps::pending(s, 0)) {
    try {
      if (kps::handle(s, keys, c, n, roles) == counted) ++n_counted;
    } catch (const core::Error& e) {
      std::cerr << "transfer " << n.transfer_id << " failed: " << e.what() << std::endl;
      if (!first) first = e;
    }
  }
  if (first) throw *first;
  return n_counted;
}

}  // namespace

namespace kps {

DeviceKeys open_device(const fs::path& dir) {
  const auto chip = Chip::load(dir);
  const auto image = read_bytes(chip.paths().image());
  if (!image) throw core::Error(error::FlashEmpty, "flash is empty: the device is not personalized");
  chip.verify_image(*image);
  const auto flash = core::FlashImage::decode(*image);
  DeviceKeys k;
  k.chip_id = chip.chip_id();
  k.roots = chip.roots();
  k.pkg = core::DataPackage::decode(chip.open(flash.backup));
  Botan::DataSource_Memory src(k.pkg.identity_key);
  k.identity_key = Botan::PKCS8::load_key(src);
  k.chain_der.push_back(k.pkg.identity_cert);
  for (const auto& c : k.pkg.ca_chain) k.chain_der.push_back(c);
  if (k.pkg.transport_cert.empty() || k.pkg.transport_key.size() != core::hpke::kSecretKeySize)
    throw core::Error(error::ImageRejected, "the device holds no transport key");
  return k;
}

namespace {
core::http::ClientOptions client_options(const KpsClientConfig& c, int io_timeout_s) {
  if (c.url.empty()) throw core::ConfigError(core::ErrorCode::Usage, "--kps URL is required");
  core::http::ClientOptions o;
  o.base_url = c.url;
  o.ca_file = c.ca;
  o.io_timeout = std::chrono::seconds(io_timeout_s);
  return o;
}

std::unique_ptr<Botan::Public_Key> load_kps_key(const std::string& path) {
  if (path.empty())
    throw core::ConfigError(core::ErrorCode::Usage, "--kps-key FILE is required: the KPS signing public key (PEM)");
  try {
    return std::unique_ptr<Botan::Public_Key>(Botan::X509::load_key(path));
  } catch (const std::exception& e) {
    throw core::ConfigError(core::ErrorCode::Config, "--kps-key " + path + " is not a public key: " + e.what());
  }
}
}  // namespace

Session::Session(const KpsClientConfig& c, const DeviceKeys& keys, int io_timeout_s)
    : m_keys(keys), m_clock_offset_s(c.clock_offset_s), m_kps_key(load_kps_key(c.kps_key)),
      m_client(client_options(c, io_timeout_s)) {}

std::int64_t Session::now() const { return static_cast<std::int64_t>(std::time(nullptr)) + m_clock_offset_s; }

core::http::Response Session::get(const std::string& path) { return checked("GET", path, nullptr, ""); }

core::http::Response Session::post(const std::string& path, const std::string& body, const std::string& ctype) {
  return checked("POST", path, &body, ctype);
}

core::http::Response Session::checked(const std::string& method, const std::string& path, const std::string* body,
                                      const std::string& ctype) {
  const std::int64_t t = now();
  const auto headers = core::device_auth::sign_request(*m_keys.identity_key, m_keys.chain_der, method, path,
                                                       body ? *body : "", t, m_rng);
  auto r = body ? m_client.post(path, *body, ctype, headers) : m_client.get(path, headers);
  core::http_signature::Headers req(headers.begin(), headers.end());
  core::http_signature::Headers resp(r.headers.begin(), r.headers.end());
  try {
    // The answer is checked against now at its arrival (a long poll may hold it up to 30 s).
    core::http_signature::verify_kps_response(r.status, resp, r.body, req, *m_kps_key,
                                              core::http_signature::Algorithm::EcdsaP256Sha256, now());
  } catch (const core::Error& e) {
    throw core::Error(error::KpsNotAuthentic, "KPS answer not authentic (" + method + " " + path + "): " + e.what());
  }
  return r;
}

namespace {
// A notice id is a JSON number (a bigserial) or a string.
std::string notice_id(const Poco::JSON::Object::Ptr& o) {
  if (o && o->has("id") && o->get("id").isInteger()) return std::to_string(o->get("id").convert<std::int64_t>());
  return str(o, "id");
}
}  // namespace

std::vector<Notice> pending(Session& s, int wait_s) {
  const auto r = s.get(wait_s > 0 ? "/v1/notifications?wait=" + std::to_string(wait_s) : "/v1/notifications");
  expect(r, 200, "notifications");
  std::vector<Notice> out;
  const auto arr = parse_object(r.body)->getArray("notifications");
  if (!arr) throw core::Error(error::KpsProtocol, "the KPS answer lacks notifications");
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const auto o = arr->getObject(static_cast<unsigned>(i));
    Notice n{notice_id(o), str(o, "reason"), o->optValue<std::string>("uri", ""),
             o->optValue<std::string>("transfer_id", "")};
    out.push_back(std::move(n));
  }
  return out;
}

void ack(Session& s, const Notice& n) {
  if (!is_uuid(n.id) && n.id.find_first_not_of("0123456789") != std::string::npos)
    throw core::Error(error::KpsProtocol, "the KPS gave a notice id that is neither a UUID nor a number");
  expect(s.post("/v1/notifications/" + n.id + "/ack", "", "application/json"), 200, "acknowledge notice");
}

std::string handle(Session& s, const DeviceKeys& keys, const KpsClientConfig& c, const Notice& n, unsigned roles) {
  std::string outcome;
  const bool transfer = is_uuid(n.transfer_id);
  if (n.reason == "transfer-requested" && (roles & Source) && transfer) outcome = serve(s, keys, c, n);
  else if (n.reason == "key-delivered" && (roles & Target) && transfer) outcome = receive(s, keys, c, n);
  else if ((n.reason == "key-acknowledged" && (roles & Source)) || (n.reason == "transfer-refused" && (roles & Target)) ||
           n.reason == "transfer-expired")
    outcome = "noted";
  else
    return "";  // another command's notice: left for it
  if (outcome == "noted" || outcome == "skipped")
    std::cout << "notice " << n.reason << " " << n.transfer_id << " " << outcome << std::endl;
  if ((n.reason == "transfer-refused" || n.reason == "transfer-expired") && transfer)
    fs::remove(request_record(c.dir, n.transfer_id));  // nothing more will come for it
  ack(s, n);
  return outcome;
}

}  // namespace kps

fs::path user_key_path(const fs::path& dir, const std::string& label) {
  check_label(label);
  return dir / "secure" / "keys" / (label + ".key");
}

void create_user_key(const fs::path& dir, const std::string& label) {
  Chip::load(dir);  // a device directory, not any directory
  const auto path = user_key_path(dir, label);
  if (fs::exists(path)) throw core::Error(error::KeyExists, "a key labelled " + label + " exists already");
  fs::create_directories(path.parent_path());
  fs::permissions(path.parent_path(), fs::perms::owner_all, fs::perm_options::replace);
  core::SecureBytes key(kUserKeySize);
  Botan::System_RNG().randomize(key.data(), key.size());
  write_atomic(path, key.data(), key.size(), std::nullopt, 0600);
}

core::SecureBytes load_user_key(const fs::path& dir, const std::string& label) {
  auto key = read_secret(user_key_path(dir, label), 64);
  if (!key) throw core::Error(error::NoSuchKey, "no key labelled " + label + " in " + dir.string());
  if (key->size() != kUserKeySize) throw core::Error(error::NoSuchKey, "the key labelled " + label + " is not 32 bytes");
  return *key;
}

void store_user_key(const fs::path& dir, const std::string& label, const core::SecureBytes& key) {
  const auto path = user_key_path(dir, label);
  if (auto existing = read_secret(path, 64)) {
    if (*existing == key) return;
    throw core::Error(error::KeyExists, "a different key labelled " + label + " exists already");
  }
  fs::create_directories(path.parent_path());
  fs::permissions(path.parent_path(), fs::perms::owner_all, fs::perm_options::replace);
  write_atomic(path, key.data(), key.size(), std::nullopt, 0600);
}

std::string kps_request(const KpsClientConfig& c, const std::string& source_chip, const std::string& label) {
  check_label(label);
  const auto source = core::ChipId::parse(source_chip).str();
  const auto keys = kps::open_device(c.dir);
  kps::Session s(c, keys);
  const std::string body = "{\"source\":\"" + source + "\",\"label\":\"" + label + "\"}";
  const auto r = s.post("/v1/transfers", body, "application/json");
  expect(r, 201, "transfer request");
  const std::string id = str(parse_object(r.body), "id");
  write_request_record(c.dir, id, source, label);
  std::cout << "requested " << id << " " << label << " from " << source << " to " << keys.chip_id.str() << std::endl;
  return id;
}

int kps_serve_once(const KpsClientConfig& c) { return one_pass(c, kps::Source, "delivered"); }

int kps_receive(const KpsClientConfig& c) { return one_pass(c, kps::Target, "received"); }

void kps_open_file(const std::string& dir, const std::string& file, const std::string& transfer_id,
                   const std::string& label, const std::string& source_chip) {
  check_label(label);
  const auto keys = kps::open_device(dir);
  const auto wire = read_bytes(file, core::kps_envelope::kMaxSize);
  if (!wire) throw core::IoError(core::ErrorCode::Io, "cannot read " + file);
  const auto envelope = core::kps_envelope::parse(*wire);
  const auto source = source_chip.empty() ? envelope.header.source : core::ChipId::parse(source_chip);
  const auto key = core::kps_envelope::verify_and_open(envelope, {transfer_id, label, source, keys.chip_id},
                                                       keys.roots, keys.pkg.transport_key);
  if (key.size() != kUserKeySize) throw core::Error(error::KpsProtocol, "the sealed key is not 32 bytes");
  store_user_key(dir, label, key);
  std::cout << "opened " << label << " from " << source.str() << " kcv " << kcv_hex(key) << std::endl;
}

int cmd_key_new(const std::string& dir, const std::string& label) {
  create_user_key(dir, label);
  std::cout << "created " << label << " kcv " << kcv_hex(load_user_key(dir, label)) << std::endl;
  return core::exit_code::ok;
}

int cmd_key_kcv(const std::string& dir, const std::string& label) {
  std::cout << kcv_hex(load_user_key(dir, label)) << std::endl;
  return core::exit_code::ok;
}

int cmd_kps_request(const KpsClientConfig& c, const std::string& source_chip, const std::string& label) {
  kps_request(c, source_chip, label);
  return core::exit_code::ok;
}

int cmd_kps_serve_once(const KpsClientConfig& c) {
  const int n = kps_serve_once(c);
  std::cout << "serve-once: " << n << " delivered" << std::endl;
  return core::exit_code::ok;
}

int cmd_kps_receive(const KpsClientConfig& c) {
  const int n = kps_receive(c);
  std::cout << "receive: " << n << " received" << std::endl;
  return core::exit_code::ok;
}

int cmd_kps_open_file(const std::string& dir, const std::string& file, const std::string& transfer_id,
                      const std::string& label, const std::string& source_chip) {
  kps_open_file(dir, file, transfer_id, label, source_chip);
  return core::exit_code::ok;
}

}  // namespace keyline::device
