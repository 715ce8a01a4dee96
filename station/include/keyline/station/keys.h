// Manufacturer keys in the HSM (seed 003: the key server's keys stay in its token) and the
// certificates made from them. `keys init` creates, all sensitive and never extractable:
//   keyline-root         P-256, signs the root certificate (the trust anchor in device ROM)
//   keyline-device-ca    P-256, the Manufacturer Device CA: signs identity and transport certificates
//   keyline-service-ca   P-256, issues TLS certificates for the public DB, the KPS and the station
//   keyline-station-tls  P-256, the station's TLS client key for publishing (used through OpenSSL's
//                        PKCS#11 engine, so it stays on the token)
//   keyline-master       HMAC key: communication keys are HMAC-SHA256(master, "keyline/comm/v1" || IMEI)
//   keyline-wrap         AES-256: wraps pre-generated device keys in the pool and in the journal
//   station-oce          P-256, ECDH only: the station's static SCP11a key (OCE), certified by the
//                        Device CA (oce.pem) and used through CKM_ECDH1_DERIVE (docs/station.md)
// and writes PEM certificates to the PKI directory (see pki_file()).
#pragma once

#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <botan/x509cert.h>

#include "keyline/core/pkcs11.h"
#include "keyline/station/config.h"

namespace keyline::station {

namespace key_label {
constexpr const char* root = "keyline-root";
constexpr const char* device_ca = "keyline-device-ca";
constexpr const char* service_ca = "keyline-service-ca";
constexpr const char* station_tls = "keyline-station-tls";
constexpr const char* master = "keyline-master";
constexpr const char* wrap = "keyline-wrap";
constexpr const char* oce = "station-oce";
}  // namespace key_label

// Files in the PKI directory.
namespace pki_file {
constexpr const char* root = "root.pem";                 // manufacturer root (device ROM trust anchor)
constexpr const char* device_ca = "device-ca.pem";       // Manufacturer Device CA
constexpr const char* service_ca = "service-ca.pem";     // service CA (TLS)
constexpr const char* tls_trust = "tls-ca.pem";          // service CA + root: what TLS clients pass as --ca
constexpr const char* station_tls = "station-tls.pem";   // station client certificate (+ service CA)
constexpr const char* backupdb_cert = "backupdb-tls.pem";  // public DB server certificate (+ service CA)
constexpr const char* backupdb_key = "backupdb-tls.key";   // its key (a server key, not a manufacturer key)
constexpr const char* kps_cert = "kps-tls.pem";
constexpr const char* kps_key = "kps-tls.key";
constexpr const char* service_cert = "service-tls.pem";  // keyline-service's server certificate (+ service CA)
constexpr const char* service_key = "service-tls.key";
constexpr const char* oce = "oce.pem";  // the station's SCP11a OCE certificate (from the Device CA)
}  // namespace pki_file

struct KeysInitOptions {
  std::string organization = "keyline demo manufacturer";
  // Names of the public DB's, the KPS's and keyline-service's server certificates (SAN): --dns (valid host names) and
  // --ip (IPv4 literals). When both are empty: 127.0.0.1 and localhost.
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  // `keys server-cert`: make new server keys and certificates even when the present ones are fine
  // (new names, or a server key to replace).
  bool reissue_server_certs = false;
  // `keys server-cert --for NAME` (repeatable: backupdb, kps, service): re-issue only these; empty: all.
  std::vector<std::string> reissue_for;
  // `keys init --offline-root`: the root stays on the ceremony's token (docs/ceremony.md); the station
  // makes its Device CA and TLS keys (and master, wrap) and writes CSRs for the ceremony to sign.
  bool offline_root = false;
};

// CSRs written by `keys init --offline-root` into the PKI directory.
namespace csr_file {
constexpr const char* device_ca = "device-ca.csr";  // CN "<station id> Device CA", O organization
constexpr const char* station = "station.csr";      // CN <station id>, OU keyline station
constexpr const char* service_ca = "service-ca.csr";  // CN "<station id> Service CA", O organization
}  // namespace csr_file

// The SAN names the server certificates get: ip_addresses then dns_names, or the default pair.
// Throws ConfigError(Usage) naming a --dns that is not a host name or an --ip that is not IPv4.
std::vector<std::string> server_names(const KeysInitOptions& options);

// Creates what is missing and keeps what is there (docs/station.md, "Keys"): a key already on the token
// is reused, a missing one generated; every certificate and file in the PKI directory is re-made when it
// is missing or does not belong to the token's keys (wrong key, wrong issuer, a server key file wider
// than 0600, a TLS certificate with less than 30 days left). A completed set is left as it is (exit 0),
// so an init interrupted halfway is finished by running it again. Files are written atomically (temp
// file created 0600 in the same directory, fsync, rename, fsync of the directory). Throws
// errc::KeysMissing when the token holds one half of a key pair without the other.
// The PKI directory (and missing parents) is created 0700 whatever the umask; one another user could
// change is refused with errc::PkiUnsafe before the token is opened (see pki_path). The whole run holds
// an exclusive flock on <pki_dir>/.keys.lock: a concurrent run waits, saying so on `out`.
void keys_init(const StationConfig& config, const KeysInitOptions& options, std::ostream& out);

// `keys init --offline-root`: as keys_init (lock, checks, atomic files, reuse) but no root, service CA
// or server keys: the Device CA, station TLS, master and wrapping keys on the token, then the two CSRs
// (csr_file) signed by their token keys. Throws errc::KeysExist when the token holds a root key (a
// single-token station: the two modes do not mix).
void keys_csr(const StationConfig& config, const KeysInitOptions& options, std::ostream& out);

// `keys install-cert`: certificates the ceremony signed from those CSRs. Each must hold the public key
// of the token's Device CA or station TLS key (that decides its role), verify up to `root_pem` (a
// self-signed CA) and match the role's profile (Device CA: CA, keyCertSign, path length 0; station:
// core::lint_station_certificate with this station's id). All are checked before any is written: one
// refused (errc::CertRefused, naming the file and why) installs nothing. Then device-ca.pem,
// station-tls.pem and root.pem (the station's trust anchor) are written atomically, under the lock.
void keys_install_cert(const StationConfig& config, const std::string& root_pem,
                       const std::vector<std::string>& cert_files, std::ostream& out);

// What a running station needs: the token, the Device CA key on it, and the certificates.
struct StationKeys {
  std::shared_ptr<core::Pkcs11Token> token;
  std::unique_ptr<core::Pkcs11EcdsaPrivateKey> device_ca_key;
  Botan::X509_Certificate device_ca_cert;
  Botan::X509_Certificate root_cert;
  // The chain PERFORM SECURITY OPERATION sends (DER): Device CA certificate, OCE certificate. Empty
  // when oce.pem is missing or not for the token's OCE key (a plain-channel station needs none).
  std::vector<core::Bytes> oce_chain;
  // The version of the station TLS key station-tls.pem certifies (docs/custody.md, "Roll").
  std::string station_tls_label = key_label::station_tls;
  // The newest master version on the token when the line started (newest_master_version): the one
  // new devices derive their communication key with (docs/custody.md "Roll").
  int master_version = 1;

  // Opens the token and loads the certificates from the PKI directory. Throws errc::KeysMissing with
  // what to run when `keys init` has not been run, errc::PkiUnsafe as pki_path does (before the token
  // is opened).
  static StationKeys open(const StationConfig& config, std::size_t max_sessions = 8);
};

// Versions of the Device CA and station TLS keys (docs/custody.md, "Roll"): version 1 is the label
// itself ("keyline-device-ca"), version N >= 2 "<label>-vN" with CKA_ID the role's byte (2, 4) then N in
// 4 bytes big-endian. The installed certificate decides which version is used.
std::string key_version_label(const std::string& base, int version);
int key_version_of(const std::string& base, const std::string& label);  // 0: not a version of `base`
std::string newest_key_label(core::Pkcs11Token& token, const std::string& base);  // of the private keys
// The version of `base` on the token whose public key `cert` certifies, or "" when none does.
std::string key_label_for(core::Pkcs11Token& token, const std::string& base, const Botan::X509_Certificate& cert);

// The station TLS key version station-tls.pem certifies (opens the token; the base label when the file
// is missing or matches none): what a TLS context built outside StationKeys must name.
std::string station_tls_label(const StationConfig& config);

// `keys roll device-ca|station-tls`: the next version beside the old on the token, then (a token with
// its own root) its certificate installed at once, or (under the offline root) a CSR for the ceremony,
// `device-ca-vN.csr` / `station-vN.csr`, which `keys install-cert` completes. Audited before and after
// (custody.roll.*); refused without a station database.
void keys_roll(const StationConfig& config, const std::string& what, std::ostream& out);

// The path of `file` in the PKI directory, for a reader that trusts it (tls-ca.pem for publishing).
// Throws errc::PkiUnsafe when another user could change it: the directory not this user's or writable
// by group or others; a directory above it (as given or resolved) neither root's nor this user's, or
// writable by others and not sticky; the file, when present, a symbolic link, not a regular file,
// another user's or writable by group or others. A missing directory or file passes (reading it fails).
std::string pki_path(const StationConfig& config, const char* file);

}  // namespace keyline::station
