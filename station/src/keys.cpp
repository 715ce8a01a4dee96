#include "keyline/station/keys.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/hex.h>
#include <botan/pkcs8.h>
#include <botan/sha2_32.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/station/errors.h"

namespace keyline::station {

namespace fs = std::filesystem;

std::string pki_path(const StationConfig& config, const char* file) { return (fs::path(config.pki_dir) / file).string(); }

namespace {

void write_file(const std::string& path, const std::string& content, mode_t mode) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw core::IoError(core::ErrorCode::Io, "cannot write " + path);
    out << content;
    if (!out.flush()) throw core::IoError(core::ErrorCode::Io, "cannot write " + path);
  }
  ::chmod(tmp.c_str(), mode);
  fs::rename(tmp, path);
}

std::string fingerprint(const Botan::X509_Certificate& c) { return c.fingerprint("SHA-256"); }

}  // namespace

void keys_init(const StationConfig& config, const KeysInitOptions& options, std::ostream& out) {
  const core::SecureBytes pin = read_pin(config);
  auto token = core::Pkcs11Token::open(config.hsm_module, config.token_label, pin, 4);
  for (const char* l : {key_label::root, key_label::device_ca, key_label::service_ca, key_label::station_tls})
    if (token->has_private_key(l))
      throw core::Error(errc::KeysExist, std::string("token '") + config.token_label + "' already holds key '" + l +
                                             "': keys are initialised once (use a fresh token to start over)");
  fs::create_directories(config.pki_dir);

  Botan::AutoSeeded_RNG rng;
  auto make_key = [&](const char* label, std::uint8_t id) {
    token->generate_ec_p256(label, core::Bytes{id});
    out << "keys: generated " << label << " (P-256, sensitive, never extractable) on token '" << config.token_label
        << "'\n";
    return std::make_unique<core::Pkcs11EcdsaPrivateKey>(token, label);
  };
  auto root_key = make_key(key_label::root, 1);
  auto device_ca_key = make_key(key_label::device_ca, 2);
  auto service_ca_key = make_key(key_label::service_ca, 3);
  auto station_tls_key = make_key(key_label::station_tls, 4);
  token->generate_hmac_key(key_label::master);
  out << "keys: generated " << key_label::master << " (HMAC-SHA256 derivation key) on the token\n";
  token->generate_aes_key(key_label::wrap);
  out << "keys: generated " << key_label::wrap << " (AES-256 wrapping key) on the token\n";

  const auto root = core::make_root_certificate(*root_key, "Manufacturer Root", options.organization, rng);
  const auto device_ca = core::make_ca_certificate(root, *root_key, *device_ca_key, "Manufacturer Device CA",
                                                   options.organization, 0, rng);
  const auto service_ca = core::make_ca_certificate(root, *root_key, *service_ca_key, "Manufacturer Service CA",
                                                    options.organization, 0, rng);
  const auto station_tls = core::issue_tls_certificate(service_ca, *service_ca_key, *station_tls_key,
                                                       config.station_id, {}, core::TlsRole::Client, rng);

  // Server keys of the public DB and the KPS are their own, not the manufacturer's: they are made here
  // for the embedded default and handed to those servers as files (0600).
  auto server = [&](const char* cert_file, const char* key_file, const std::string& cn) {
    Botan::ECDSA_PrivateKey key(rng, Botan::EC_Group("secp256r1"));
    const auto cert = core::issue_tls_certificate(service_ca, *service_ca_key, key, cn, options.server_names,
                                                  core::TlsRole::Server, rng);
    write_file(pki_path(config, key_file), Botan::PKCS8::PEM_encode(key), 0600);
    write_file(pki_path(config, cert_file), core::to_pem(cert) + core::to_pem(service_ca), 0644);
  };

  write_file(pki_path(config, pki_file::root), core::to_pem(root), 0644);
  write_file(pki_path(config, pki_file::device_ca), core::to_pem(device_ca), 0644);
  write_file(pki_path(config, pki_file::service_ca), core::to_pem(service_ca), 0644);
  write_file(pki_path(config, pki_file::tls_trust), core::to_pem(service_ca) + core::to_pem(root), 0644);
  write_file(pki_path(config, pki_file::station_tls), core::to_pem(station_tls) + core::to_pem(service_ca), 0644);
  server(pki_file::backupdb_cert, pki_file::backupdb_key, "keyline-backupdb");
  server(pki_file::kps_cert, pki_file::kps_key, "keyline-kps");

  out << "keys: root certificate    " << pki_path(config, pki_file::root) << " SHA-256 " << fingerprint(root) << "\n"
      << "keys: Device CA           " << pki_path(config, pki_file::device_ca) << " SHA-256 " << fingerprint(device_ca)
      << "\n"
      << "keys: service CA          " << pki_path(config, pki_file::service_ca) << "\n"
      << "keys: station TLS client  " << pki_path(config, pki_file::station_tls) << " (key on the token)\n"
      << "keys: public DB server    " << pki_path(config, pki_file::backupdb_cert) << "\n"
      << "keys: KPS server          " << pki_path(config, pki_file::kps_cert) << "\n";
}

StationKeys StationKeys::open(const StationConfig& config, std::size_t max_sessions) {
  const core::SecureBytes pin = read_pin(config);
  auto token = core::Pkcs11Token::open(config.hsm_module, config.token_label, pin, max_sessions);
  if (!token->has_private_key(key_label::device_ca))
    throw core::Error(errc::KeysMissing, "token '" + config.token_label +
                                             "' holds no Device CA key: run `keyline-station keys init` first");
  const std::string ca_path = pki_path(config, pki_file::device_ca);
  const std::string root_path = pki_path(config, pki_file::root);
  if (!fs::exists(ca_path) || !fs::exists(root_path))
    throw core::Error(errc::KeysMissing, "no certificates in " + config.pki_dir + ": run `keyline-station keys init` first");
  auto ca_key = std::make_unique<core::Pkcs11EcdsaPrivateKey>(token, key_label::device_ca);
  auto ca_cert = core::load_certificates_pem(ca_path).at(0);
  auto root_cert = core::load_certificates_pem(root_path).at(0);
  // The certificate on disk must belong to the key on the token: a mismatched PKI dir would issue
  // certificates that no device accepts.
  if (ca_cert.subject_public_key_info() != ca_key->subject_public_key())
    throw core::Error(errc::KeysMissing, ca_path + " does not match the Device CA key on token '" + config.token_label + "'");
  return StationKeys{std::move(token), std::move(ca_key), std::move(ca_cert), std::move(root_cert)};
}

}  // namespace keyline::station
