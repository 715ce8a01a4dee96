#include "keyline/device/kps_agent.h"

#include <fcntl.h>
#include <unistd.h>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <botan/data_src.h>
#include <botan/pkcs8.h>
#include <botan/system_rng.h>

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
#include "keyline/device/chip.h"

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
  core::SecureBytes out(max + 1);
  std::size_t got = 0;
  for (;;) {
    const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
    if (got == out.size()) break;
  }
  ::close(fd);
  if (got > max) throw core::IoError(core::ErrorCode::Io, path.string() + " is larger than a key");
  out.resize(got);
  return out;
}

// What the agent needs from the personalized device: opened from flash with the chip key, exactly as
// at boot (every boot check runs first).
struct DeviceKeys {
  core::ChipId chip_id;
  std::vector<Botan::X509_Certificate> roots;
  core::DataPackage pkg;
  std::unique_ptr<Botan::Private_Key> identity_key;
  std::vector<core::Bytes> chain_der;  // identity certificate, then its issuers
};

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

class KpsSession {
 public:
  KpsSession(const KpsClientConfig& c, const DeviceKeys& keys) : m_keys(keys), m_client(options(c)) {}

  core::http::Response get(const std::string& path) {
    return m_client.get(path, sign("GET", path, ""));
  }
  core::http::Response post(const std::string& path, const std::string& body, const std::string& ctype) {
    return m_client.post(path, body, ctype, sign("POST", path, body));
  }

 private:
  static core::http::ClientOptions options(const KpsClientConfig& c) {
    if (c.url.empty()) throw core::ConfigError(core::ErrorCode::Usage, "--kps URL is required");
    core::http::ClientOptions o;
    o.base_url = c.url;
    o.ca_file = c.ca;
    return o;
  }
  std::map<std::string, std::string> sign(const std::string& method, const std::string& path, const std::string& body) {
    return core::device_auth::sign_request(*m_keys.identity_key, m_keys.chain_der, method, path, body,
                                           static_cast<std::int64_t>(std::time(nullptr)), m_rng);
  }

  const DeviceKeys& m_keys;
  Botan::System_RNG m_rng;
  core::http::Client m_client;
};

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
  if (!o->has(name)) throw core::Error(error::KpsProtocol, std::string("the KPS answer lacks ") + name);
  return o->getValue<std::string>(name);
}

struct Notice {
  std::string id, reason, uri, transfer_id;
};

std::vector<Notice> unread(KpsSession& s) {
  const auto r = s.get("/v1/notifications");
  expect(r, 200, "notifications");
  std::vector<Notice> out;
  const auto arr = parse_object(r.body)->getArray("notifications");
  if (!arr) throw core::Error(error::KpsProtocol, "the KPS answer lacks notifications");
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const auto o = arr->getObject(static_cast<unsigned>(i));
    out.push_back({o->getValue<std::string>("id"), str(o, "reason"), str(o, "uri"), str(o, "transfer_id")});
  }
  return out;
}

// Runs `handle` on every unread notice; returns how many it handled. One transfer that fails (a missing
// key, a refusal) does not stop the others: the first failure is rethrown at the end, and its
// notification stays unread, so the next pass retries it.
int handle_unread(KpsSession& s, const std::function<bool(const Notice&)>& handle) {
  int handled = 0;
  std::optional<core::Error> first;
  for (const auto& n : unread(s)) {
    try {
      if (handle(n)) ++handled;
    } catch (const core::Error& e) {
      std::cerr << "transfer " << n.transfer_id << " failed: " << e.what() << std::endl;
      if (!first) first = e;
    }
  }
  if (first) throw *first;
  return handled;
}

void mark_read(KpsSession& s, const Notice& n) {
  expect(s.post("/v1/notifications/" + n.id + "/read", "", "application/json"), 200, "mark notification read");
}

bool is_uuid(const std::string& s) {
  static const std::regex re("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$");
  return std::regex_match(s, re);
}

// The transfer a notice is about, when the notice has `reason` and the transfer names this device as
// `role` ("source" or "target"); any other notice is printed, marked read and answered with null.
Poco::JSON::Object::Ptr own_transfer(KpsSession& s, const DeviceKeys& keys, const Notice& n, const char* reason,
                                     const char* role) {
  if (n.reason != reason || !is_uuid(n.transfer_id)) {
    std::cout << "notice " << n.reason << " " << n.uri << std::endl;
    mark_read(s, n);
    return nullptr;
  }
  const auto r = s.get("/v1/transfers/" + n.transfer_id);
  expect(r, 200, "transfer " + n.transfer_id);
  auto t = parse_object(r.body);
  if (str(t, role) != keys.chip_id.str() || str(t, "id") != n.transfer_id)
    throw core::Error(error::KpsProtocol, "the KPS sent a transfer that is not this device's");
  return t;
}

// The source's own check of the transport key information (S2/S3): the certificate chains to this
// device's ROM root, is an X25519 key-agreement certificate and names the requesting chip. The KPS
// checked it too, but the source trusts only its ROM.
core::Bytes target_transport_key(const DeviceKeys& k, const std::string& chain_pem, const std::string& target) {
  try {
    const auto certs = core::parse_certificates_pem(chain_pem);
    core::verify_chain(certs[0], {certs.begin() + 1, certs.end()}, k.roots);
    std::unique_ptr<Botan::Public_Key> pub(certs[0].subject_public_key());
    if (pub->algo_name() != "Curve25519") throw core::CryptoError(core::ErrorCode::Crypto, "not an X25519 key");
    if (!certs[0].allowed_usage(Botan::Key_Constraints::KEY_AGREEMENT))
      throw core::CryptoError(core::ErrorCode::Crypto, "keyUsage lacks keyAgreement");
    if (core::read_identity(certs[0]).chip_id.str() != target)
      throw core::CryptoError(core::ErrorCode::Crypto, "the certificate names another chip");
    const auto bits = certs[0].subject_public_key_bitstring();
    if (bits.size() != core::hpke::kPublicKeySize) throw core::CryptoError(core::ErrorCode::Crypto, "bad key size");
    return core::Bytes(bits.begin(), bits.end());
  } catch (const core::Error& e) {
    throw core::Error(core::ErrorCode::ChainInvalid, "target transport certificate refused: " + std::string(e.what()));
  } catch (const std::exception& e) {
    throw core::Error(core::ErrorCode::ChainInvalid, "target transport certificate refused: " + std::string(e.what()));
  }
}

core::Bytes aad_of(const std::string& transfer_id) { return core::Bytes(transfer_id.begin(), transfer_id.end()); }

std::string kcv_hex(const core::SecureBytes& key) { return core::to_hex(core::key_check_value(key)); }

}  // namespace

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
  const auto keys = open_device(c.dir);
  std::string chain_pem = core::to_pem(Botan::X509_Certificate(keys.pkg.transport_cert));
  for (const auto& der : keys.pkg.ca_chain) chain_pem += core::to_pem(Botan::X509_Certificate(der));
  KpsSession s(c, keys);
  const std::string body = "{\"source\":\"" + source + "\",\"label\":\"" + label +
                           "\",\"transport_certificates\":\"" + core::http::json_escape(chain_pem) + "\"}";
  const auto r = s.post("/v1/transfers", body, "application/json");
  expect(r, 201, "transfer request");
  const std::string id = str(parse_object(r.body), "id");
  std::cout << "requested " << id << " " << label << " from " << source << " to " << keys.chip_id.str() << std::endl;
  return id;
}

int kps_serve_once(const KpsClientConfig& c) {
  const auto keys = open_device(c.dir);
  KpsSession s(c, keys);
  const auto handle = [&](const Notice& n) -> bool {
    const auto t = own_transfer(s, keys, n, "transfer-requested", "source");
    if (!t) return false;
    const std::string path = "/v1/transfers/" + n.transfer_id;
    if (str(t, "state") != "requested") {
      mark_read(s, n);
      return false;
    }
    const std::string label = str(t, "label");
    const std::string target = str(t, "target");
    const auto pk = target_transport_key(keys, str(t, "transport_certificates"), target);
    const auto key = load_user_key(c.dir, label);
    const core::Bytes info(kKpsHpkeInfo, kKpsHpkeInfo + std::char_traits<char>::length(kKpsHpkeInfo));
    const auto sealed = core::hpke::seal(pk, info, aad_of(n.transfer_id), key);
    const auto up = s.post(path + "/key", std::string(sealed.begin(), sealed.end()), "application/octet-stream");
    expect(up, 200, "deliver " + n.transfer_id);
    mark_read(s, n);
    std::cout << "delivered " << n.transfer_id << " " << label << " to " << target << std::endl;
    return true;
  };
  return handle_unread(s, handle);
}

int kps_receive(const KpsClientConfig& c) {
  const auto keys = open_device(c.dir);
  KpsSession s(c, keys);
  const auto handle = [&](const Notice& n) -> bool {
    const auto t = own_transfer(s, keys, n, "key-delivered", "target");
    if (!t) return false;
    const std::string path = "/v1/transfers/" + n.transfer_id;
    if (str(t, "state") == "acknowledged") {
      mark_read(s, n);
      return false;
    }
    const std::string label = str(t, "label");
    check_label(label);
    const auto k = s.get(path + "/key");
    expect(k, 200, "fetch " + n.transfer_id);
    const core::Bytes info(kKpsHpkeInfo, kKpsHpkeInfo + std::char_traits<char>::length(kKpsHpkeInfo));
    const auto key = core::hpke::open(keys.pkg.transport_key, info, aad_of(n.transfer_id),
                                      core::Bytes(k.body.begin(), k.body.end()));
    if (key.size() != kUserKeySize) throw core::Error(error::KpsProtocol, "the transferred key is not 32 bytes");
    store_user_key(c.dir, label, key);
    // Acknowledge only once the key is durable here: the KPS deletes its copy on this answer.
    expect(s.post(path + "/ack", "", "application/json"), 200, "acknowledge " + n.transfer_id);
    mark_read(s, n);
    std::cout << "received " << n.transfer_id << " " << label << " from " << str(t, "source") << " kcv "
              << kcv_hex(key) << std::endl;
    return true;
  };
  return handle_unread(s, handle);
}

void kps_open_file(const std::string& dir, const std::string& file, const std::string& transfer_id,
                   const std::string& label) {
  check_label(label);
  const auto keys = open_device(dir);
  const auto wire = read_bytes(file, 4096);
  if (!wire) throw core::IoError(core::ErrorCode::Io, "cannot read " + file);
  const core::Bytes info(kKpsHpkeInfo, kKpsHpkeInfo + std::char_traits<char>::length(kKpsHpkeInfo));
  const auto key = core::hpke::open(keys.pkg.transport_key, info, aad_of(transfer_id), *wire);
  if (key.size() != kUserKeySize) throw core::Error(error::KpsProtocol, "the sealed key is not 32 bytes");
  store_user_key(dir, label, key);
  std::cout << "opened " << label << " kcv " << kcv_hex(key) << std::endl;
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
                      const std::string& label) {
  kps_open_file(dir, file, transfer_id, label);
  return core::exit_code::ok;
}

}  // namespace keyline::device
