// Mirroring the master between two tokens under dual control, and export/import (docs/custody.md).
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>

#include <botan/auto_rng.h>
#include <botan/base64.h>
#include <botan/hash.h>
#include <botan/hex.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/secret_input.h"
#include "keys_custody_internal.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"

namespace keyline::station {

namespace {

constexpr const char* kRequestMagic = "keyline-mirror-request-v1";
constexpr const char* kManifestMagic = "keyline-mirror-v1";
constexpr const char* kMechanism = "CKM_RSA_PKCS_OAEP-SHA1";
const std::string kRxPrefix = "keyline-mirror-rx-";
// Only versions 2 and later move, and they are AES-256 derive-only keys (docs/custody.md "Files").
constexpr const char* kKeyType = "AES";
constexpr const char* kUsage = "derive";

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string sha256_hex(const std::uint8_t* p, std::size_t n) {
  return Botan::hex_encode(Botan::HashFunction::create_or_throw("SHA-256")->process(p, n), false);
}
std::string sha256_hex(const core::Bytes& b) { return sha256_hex(b.data(), b.size()); }

// The receiving key's fingerprint, read out by both operators (docs/custody.md step 2).
std::string key_fingerprint(const core::Bytes& modulus, const core::Bytes& exponent) {
  core::Bytes both(modulus);
  both.insert(both.end(), exponent.begin(), exponent.end());
  return sha256_hex(both);
}

// At most one byte past the format's limit is read, so a huge file costs nothing (parse_signed_text refuses it).
std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw core::IoError(core::ErrorCode::Io, "cannot read " + path);
  std::string text(64 * 1024 + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) throw core::IoError(core::ErrorCode::Io, "cannot read " + path);
  text.resize(static_cast<std::size_t>(in.gcount()));
  return text;
}

// Written whole or not at all: a temp file beside it (O_EXCL), fsync, rename.
void write_text(const std::string& path, const std::string& text, mode_t mode) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) throw core::IoError(core::ErrorCode::Io, "cannot create " + tmp + ": " + std::strerror(errno));
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  ok = ::close(fd) == 0 && ok;
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    throw core::IoError(core::ErrorCode::Io, "cannot write " + path);
  }
}

std::string line(const std::string& name, const std::string& value) { return name + "=" + value + "\n"; }

std::string chain_pem(const std::vector<Botan::X509_Certificate>& chain) {
  std::string pem;
  for (const auto& c : chain) pem += core::to_pem(c);
  return pem;
}

std::vector<Botan::X509_Certificate> chain_of(const SignedText& text) {
  const auto pem = custody::decode_base64(text.trailer.count("certificate") ? text.trailer.at("certificate") : "",
                                          "certificate");
  try {
    return core::parse_certificates_pem(std::string(pem.begin(), pem.end()));
  } catch (const core::Error&) {
    custody::refuse("the request's certificate does not parse");
  }
}

// A receive-init request, checked: signed by a station under this station's root.
struct Request {
  SignedText text;
  core::Bytes modulus, exponent;
  std::string serial, station, key_label;
  std::string rx_id() const { return key_label.substr(kRxPrefix.size()); }
  std::string trusted_label() const { return "keyline-mirror-to-" + serial + "-" + rx_id(); }
};

Request read_request(const StationConfig& config, const std::string& file) {
  Request r;
  r.text = parse_signed_text(read_text(file), kRequestMagic);
  r.serial = r.text.field("token_serial");
  r.station = r.text.field("station_id");
  r.key_label = r.text.field("key_label");
  if (r.key_label.compare(0, kRxPrefix.size(), kRxPrefix) != 0 || r.key_label.size() != kRxPrefix.size() + 16)
    custody::refuse(file + ": key_label '" + r.key_label + "' is not a receiving key's");
  r.modulus = core::from_hex(r.text.field("rsa_modulus"));
  r.exponent = core::from_hex(r.text.field("rsa_exponent"));
  if (r.modulus.size() != 384) custody::refuse(file + ": the receiving key is not RSA-3072");
  custody::check_signature(r.text, custody::check_peer_station(chain_of(r.text), config, r.station));
  return r;
}

core::SecureBytes so_pin(const CustodyRequest& request) {
  if (!request.so_pin_file.empty()) return core::read_secret_file(request.so_pin_file);
  const char* file = std::getenv("KEYLINE_HSM_SO_PIN_FILE");
  if (file && *file) return core::read_secret_file(file);
  auto pin = core::secret_from_env("KEYLINE_HSM_SO_PIN");
  if (pin.empty())
    throw core::ConfigError(core::ErrorCode::Config,
                            "no Security Officer PIN: --so-pin-file, KEYLINE_HSM_SO_PIN_FILE or KEYLINE_HSM_SO_PIN");
  return pin;
}

const core::Pkcs11KeyInfo* find_key(const std::vector<core::Pkcs11KeyInfo>& keys, const std::string& label,
                                    const char* cls) {
  for (const auto& k : keys)
    if (k.label == label && k.object_class == cls) return &k;
  return nullptr;
}

}  // namespace

void mirror_receive_init(const StationConfig& config, const CustodyRequest& request, std::ostream& out) {
  if (request.out_file.empty()) throw core::ConfigError(core::ErrorCode::Usage, "give --out FILE");
  auto db = custody::open_db(config, "keys mirror receive-init");
  auto token = custody::open_token(config);
  const auto chain = custody::own_station_chain(config);
  Botan::AutoSeeded_RNG rng;
  const auto rx = rng.random_vec(8);
  const std::string label = kRxPrefix + Botan::hex_encode(rx, false);
  custody::audited(db, config, "custody.receive-init", "receiving key " + label, [&] {
    token->generate_rsa_receiving_pair(label, core::Bytes(rx.begin(), rx.end()));
    const auto [modulus, exponent] = token->rsa_public_key(label);
    std::string body = std::string(kRequestMagic) + "\n" + line("station_id", config.station_id) +
                       line("token_label", config.token_label) + line("token_serial", token->serial()) +
                       line("key_label", label) + line("rsa_modulus", core::to_hex(modulus)) +
                       line("rsa_exponent", core::to_hex(exponent)) + line("created", now_utc());
    const std::string pem = chain_pem(chain);
    body += custody::signature_line(*token, config, body) +
            line("certificate", Botan::base64_encode(reinterpret_cast<const std::uint8_t*>(pem.data()), pem.size()));
    write_text(request.out_file, body, 0644);
    const std::string fp = key_fingerprint(modulus, exponent);
    out << "keys: receiving key " << label << " (RSA-3072, unwrap only, never extractable) on token '"
        << config.token_label << "' serial " << token->serial() << "\n"
        << "keys: wrote " << request.out_file << "; fingerprint " << fp << "\n"
        << "keys: next, on the sending station: its Security Officer runs `keys mirror trust --request FILE`\n";
    return label + " fingerprint " + fp;
  });
}

void mirror_trust(const StationConfig& config, const CustodyRequest& request, std::ostream& out) {
  auto db = custody::open_db(config, "keys mirror trust");
  const Request r = read_request(config, request.request_file);
  const std::string fp = key_fingerprint(r.modulus, r.exponent);
  const auto pin = so_pin(request);
  const std::string what =
      "receiving key " + r.key_label + " of station " + r.station + " token " + r.serial + " fingerprint " + fp;
  custody::audited(db, config, "custody.trust", what, [&] {
    core::Pkcs11Token::so_create_trusted_rsa_wrap_key(config.hsm_module, config.token_label, pin, r.trusted_label(),
                                                      core::from_hex(r.rx_id()), r.modulus, r.exponent);
    out << "keys: the Security Officer of token '" << config.token_label << "' trusts " << r.trusted_label()
        << " (station " << r.station << ", token serial " << r.serial << ", fingerprint " << fp << ")\n"
        << "keys: next, the sending station's user runs `keys mirror send --to FILE --out WRAPPED`\n";
    return r.trusted_label();
  });
}

namespace {

struct Outgoing {
  const Request& to;
  int version;
  std::string op, id, check;
  core::Bytes wrapped;
};

std::string manifest(const StationConfig& config, core::Pkcs11Token& token, const Outgoing& o) {
  std::string m = std::string(kManifestMagic) + "\n" + line("op", o.op) + line("id", o.id) + line("kind", "master") +
                  line("key_type", kKeyType) + line("usage", kUsage) + line("label", master_label(o.version)) +
                  line("version", std::to_string(o.version)) + line("check", o.check) + line("mechanism", kMechanism) +
                  line("from_station", config.station_id) + line("from_token", config.token_label) +
                  line("from_serial", token.serial()) + line("to_station", o.to.station) +
                  line("to_serial", o.to.serial) + line("to_key", o.to.key_label) +
                  line("to_key_sha256", key_fingerprint(o.to.modulus, o.to.exponent)) +
                  line("wrapped_sha256", sha256_hex(o.wrapped)) + line("created", now_utc());
  return m + custody::signature_line(token, config, m) + line("wrapped", Botan::base64_encode(o.wrapped));
}

// The trusted copy of the request's key that this token's SO made, and that it is the same key.
core::Pkcs11Handle trusted_key(core::Pkcs11Token& token, const Request& r) {
  const auto keys = token.list_keys();
  const auto* k = find_key(keys, r.trusted_label(), "public");
  if (!k || !k->trusted)
    custody::refuse("token holds no trusted key " + r.trusted_label() +
                    ": its Security Officer runs `keys mirror trust --request FILE` first");
  if (token.rsa_public_key(r.trusted_label()) != std::make_pair(r.modulus, r.exponent))
    custody::refuse("the trusted key " + r.trusted_label() + " is not the request's key");
  return token.find_public_key(r.trusted_label());
}

int version_to_send(core::Pkcs11Token& token, int asked) {
  const int version = asked > 0 ? asked : newest_master_version(token);
  if (version <= 1)
    custody::refuse("master version 1 (" + std::string(key_label::master) +
                    ") is never extractable and cannot be mirrored: run `keys roll master` first");
  if (!token.has_secret_key(master_label(version))) custody::refuse("token holds no " + master_label(version));
  return version;
}

}  // namespace

void mirror_send(const StationConfig& config, const CustodyRequest& request, const std::string& op, std::ostream& out) {
  if (request.out_file.empty()) throw core::ConfigError(core::ErrorCode::Usage, "give --out WRAPPED");
  auto db = custody::open_db(config, ("keys " + op + " send").c_str());
  const Request r = read_request(config, request.request_file);
  auto token = custody::open_token(config);
  if (r.serial == token->serial()) custody::refuse("the request is this token's own (serial " + r.serial + ")");
  const auto wrapping = trusted_key(*token, r);
  Botan::AutoSeeded_RNG rng;
  Outgoing o{r, version_to_send(*token, request.version), op, Botan::hex_encode(rng.random_vec(16), false), {}, {}};
  o.check = master_check_value(*token, o.version);
  const std::string what = master_label(o.version) + " to station " + r.station + " token " + r.serial + " manifest " + o.id;
  custody::audited(db, config, "custody." + op + ".send", what, [&] {
    o.wrapped = token->wrap_key_rsa_oaep(wrapping, token->find_secret_key(master_label(o.version)));
    write_text(request.out_file, manifest(config, *token, o), 0600);
    db.exec("INSERT INTO secret.key_transfer (manifest_id, direction, op, key_label, version, from_serial, to_serial,"
            " from_station, to_station) VALUES ($1, 'sent', $2, $3, $4, $5, $6, $7, $8)",
            {o.id, op, master_label(o.version), o.version, token->serial(), r.serial, config.station_id, r.station});
    out << "keys: wrapped " << master_label(o.version) << " (check " << o.check << ") for token " << r.serial
        << " of station " << r.station << " into " << request.out_file << " (manifest " << o.id << ")\n";
    return what + " wrapped SHA-256 " + sha256_hex(o.wrapped);
  });
}

namespace {

struct Incoming {
  SignedText text;
  core::Bytes wrapped;
  int version = 0;
  std::string id, label;
};

// Every check that needs no change: signature and chain, the token named, the bytes, the version.
Incoming check_incoming(const StationConfig& config, const CustodyRequest& request, core::Pkcs11Token& token,
                        const std::string& op) {
  Incoming in;
  in.text = parse_signed_text(read_text(request.in_file), kManifestMagic);
  const auto peer = core::load_certificates_pem(request.from_cert);
  custody::check_signature(in.text, custody::check_peer_station(peer, config, in.text.field("from_station")));
  const auto& f = in.text;
  if (f.field("to_serial") != token.serial())
    custody::refuse("the manifest is for token serial " + f.field("to_serial") + ", this token is " + token.serial());
  if (f.field("op") != op) custody::refuse("the manifest is for `keys " + f.field("op") + "`, not " + op);
  if (f.field("kind") != "master" || f.field("key_type") != kKeyType || f.field("usage") != kUsage ||
      f.field("mechanism") != kMechanism)
    custody::refuse("the manifest names a key or mechanism this station does not import");
  in.wrapped = custody::decode_base64(f.trailer.count("wrapped") ? f.trailer.at("wrapped") : "", "wrapped");
  if (sha256_hex(in.wrapped) != f.field("wrapped_sha256"))
    custody::refuse("the wrapped bytes are not the ones the manifest names (SHA-256 differs)");
  in.label = f.field("label");
  in.version = custody::version_of_label(in.label);
  if (in.version < 2 || f.field("version") != std::to_string(in.version))
    custody::refuse("the manifest's label and version do not name a mirrorable master version");
  in.id = f.field("id");
  return in;
}

void check_fresh(core::pq::Connection& db, core::Pkcs11Token& token, const Incoming& in) {
  if (!db.exec("SELECT 1 FROM secret.key_transfer WHERE manifest_id = $1 AND direction = 'received'", {in.id}).empty())
    custody::refuse("manifest " + in.id + " was imported before (a replay)");
  if (token.has_secret_key(in.label)) custody::refuse("token already holds " + in.label);
  const auto row = db.exec("SELECT check_value FROM secret.master_key WHERE version = $1", {in.version});
  if (!row.empty()) custody::refuse("this station already has a master version " + std::to_string(in.version));
  const auto& rx = in.text.field("to_key");
  if (!token.has_private_key(rx)) custody::refuse("token holds no receiving key " + rx);
  const auto [modulus, exponent] = token.rsa_public_key(rx);
  if (key_fingerprint(modulus, exponent) != in.text.field("to_key_sha256"))
    custody::refuse("the manifest names another receiving key than " + rx);
}

// Unwrapped, checked against the manifest's check value, recorded; any failure leaves nothing behind.
void import_key(core::pq::Connection& db, core::Pkcs11Token& token, const Incoming& in, const std::string& op) {
  const auto& f = in.text;
  const auto h = token.unwrap_aes_derive_key_rsa_oaep(token.find_private_key(f.field("to_key")), in.wrapped,
                                                      in.label, custody::version_id(in.version));
  try {
    if (master_check_value(token, in.version) != f.field("check"))
      custody::refuse("the unwrapped key's check value is not the manifest's");
    core::pq::Transaction tx(db);
    tx.exec("INSERT INTO secret.key_transfer (manifest_id, direction, op, key_label, version, from_serial, to_serial,"
            " from_station, to_station) VALUES ($1, 'received', $2, $3, $4, $5, $6, $7, $8)",
            {in.id, op, in.label, in.version, f.field("from_serial"), f.field("to_serial"), f.field("from_station"),
             f.field("to_station")});
    tx.exec("INSERT INTO secret.master_key (version, label, check_value, origin, peer_serial)"
            " VALUES ($1, $2, $3, 'received', $4)",
            {in.version, in.label, f.field("check"), f.field("from_serial")});
    tx.commit();
  } catch (...) {
    token.destroy_object(h);
    throw;
  }
}

}  // namespace

void mirror_receive(const StationConfig& config, const CustodyRequest& request, const std::string& op,
                    std::ostream& out) {
  auto db = custody::open_db(config, ("keys " + op + " receive").c_str());
  auto token = custody::open_token(config);
  const std::string what = "file " + request.in_file + " from " + request.from_cert;
  custody::audited(db, config, "custody." + op + ".receive", what, [&] {
    const Incoming in = check_incoming(config, request, *token, op);
    check_fresh(db, *token, in);
    import_key(db, *token, in, op);
    out << "keys: imported " << in.label << " (master version " << in.version << ", check " << in.text.field("check")
        << ") from station " << in.text.field("from_station") << " token " << in.text.field("from_serial")
        << " (manifest " << in.id << ")\n";
    return in.label + " manifest " + in.id + " from " + in.text.field("from_serial");
  });
}

}  // namespace keyline::station
