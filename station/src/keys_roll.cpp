// `keys roll device-ca|station-tls` (docs/custody.md, "Roll"): a new key version beside the old one.
// Devices certified before keep verifying: their data packages carry the Device CA that signed them and
// every version chains to the same root.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <botan/auto_rng.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/csr.h"
#include "keyline/station/custody.h"
#include "keyline/station/errors.h"
#include "keyline/station/keys.h"
#include "keys_custody_internal.h"
#include "keys_internal.h"

namespace keyline::station {

std::string key_version_label(const std::string& base, int version) {
  return version == 1 ? base : base + "-v" + std::to_string(version);
}

int key_version_of(const std::string& base, const std::string& label) {
  if (label == base) return 1;
  const std::string prefix = base + "-v";
  if (label.compare(0, prefix.size(), prefix) != 0 || label.size() == prefix.size() || label.size() > prefix.size() + 6)
    return 0;
  int v = 0;
  for (std::size_t i = prefix.size(); i < label.size(); ++i) {
    if (label[i] < '0' || label[i] > '9') return 0;
    v = v * 10 + (label[i] - '0');
  }
  return label[prefix.size()] == '0' || v < 2 ? 0 : v;
}

namespace pki_detail {

std::string deny_entry(const Botan::X509_Certificate& cert) {
  std::string hex = cert.fingerprint("SHA-256");
  hex.erase(std::remove(hex.begin(), hex.end(), ':'), hex.end());
  return "sha256:" + hex;
}

constexpr const char* kRetiredFile = "retired-station-certs.txt";

// The old version's private key is not destroyed: `keys init` and `install-cert` look for version 1's
// label (a token without it gets a new version 1 or is refused), and a line started before the roll holds
// the old label until it restarts. The deny entry, not the key's absence, is what stops it publishing.
void say_old_key_kept(std::ostream& out, const std::string& old_label) {
  out << "keys: " << old_label << " stays on the token: a line started before this roll still publishes with it "
      << "until it restarts, and keys init and install-cert look for version 1's label\n";
}

// A station TLS roll (or install-cert) leaves the replaced certificate valid (until its notAfter) and its key on the token,
// so it could still publish: its deny entry goes to retired-station-certs.txt for the public DB's
// --station-deny (docs/custody.md, "Roll"). Appended by rewriting the whole file atomically (0644: a
// fingerprint is public); an entry already there is not written twice.
void retire_station_cert(const StationConfig& config, const Botan::X509_Certificate& old, const std::string& old_label,
                         const std::string& replaced_by, std::ostream& out) {
  const std::string entry = deny_entry(old);
  std::string text;
  {
    std::ifstream in(std::filesystem::path(config.pki_dir) / kRetiredFile, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  if (text.find(entry) == std::string::npos) {
    if (text.empty())
      text = "# Station TLS certificates retired by `keyline-station keys roll station-tls`: one --station-deny\n"
             "# entry each for the public DB (keyline-backupdb serve --station-deny FILE, docs/api.md).\n";
    else if (text.back() != '\n')
      text += '\n';
    text += entry + "  # " + config.station_id + " " + old_label + " serial " +
            core::to_hex(old.serial_number()) + " valid until " + old.not_after().readable_string() + ", retired " +
            custody::utc_now_text() + ", replaced by " + replaced_by + "\n";
    write_public(config, kRetiredFile, text);
  }
  out << "keys: the replaced certificate of " << old_label << " stays valid until "
        << old.not_after().readable_string() << ": " << kRetiredFile << " holds its entry\n"
        << "keys:   " << entry << "\n"
        << "keys: add it to the public DB's --station-deny file (it is re-read within a second, no restart), then "
           "that certificate can no longer publish\n";
  say_old_key_kept(out, old_label);
}

}  // namespace pki_detail

namespace {

std::vector<int> private_versions(core::Pkcs11Token& token, const std::string& base) {
  std::vector<int> out;
  for (const auto& k : token.list_keys())
    if (k.object_class == "private" && key_version_of(base, k.label) > 0) out.push_back(key_version_of(base, k.label));
  std::sort(out.rbegin(), out.rend());
  return out;
}

}  // namespace

std::string newest_key_label(core::Pkcs11Token& token, const std::string& base) {
  const auto versions = private_versions(token, base);
  return versions.empty() ? base : key_version_label(base, versions.front());
}

std::string key_label_for(core::Pkcs11Token& token, const std::string& base, const Botan::X509_Certificate& cert) {
  const auto spki = cert.subject_public_key_info();
  for (int v : private_versions(token, base)) {
    const auto label = key_version_label(base, v);
    if (token.has_public_key(label) && token.ec_public_key(label)->subject_public_key() == spki) return label;
  }
  return {};
}

std::string station_tls_label(const StationConfig& config) {
  const auto certs = pki_detail::read_certs(config, pki_file::station_tls);
  if (certs.empty()) return key_label::station_tls;
  auto token = core::Pkcs11Token::open(config.hsm_module, config.token_label, read_pin(config), 1);
  const auto label = key_label_for(*token, key_label::station_tls, certs[0]);
  return label.empty() ? key_label::station_tls : label;
}

namespace {

struct Roll {
  const StationConfig& config;
  std::shared_ptr<core::Pkcs11Token> token;
  std::ostream& out;
  bool device_ca;  // else station-tls
  int version;
  std::string label;
  Botan::AutoSeeded_RNG rng;

  const char* base() const { return device_ca ? key_label::device_ca : key_label::station_tls; }
  const char* cert_file() const { return device_ca ? pki_file::device_ca : pki_file::station_tls; }
};

// The role byte keys init gives the pair (2 Device CA, 4 station TLS), then the version as the master's
// (4 bytes big-endian): the PKCS#11 engine that publishing goes through pairs a private key with its
// public half by CKA_ID, so two roles' version 2 must not share one (measured: libp11 then handed the
// Device CA v2's public key for the station TLS v2 label).
core::Bytes version_key_id(bool device_ca, int version) {
  core::Bytes id{static_cast<std::uint8_t>(device_ca ? 2 : 4)};
  const auto v = custody::version_id(version);
  id.insert(id.end(), v.begin(), v.end());
  return id;
}

// The certificate being replaced stays as device-ca-vN.pem / station-tls-vN.pem (keys status lists it).
void archive_current(Roll& r) {
  const auto present = pki_detail::read_certs(r.config, r.cert_file());
  if (present.empty()) return;
  const auto old = key_label_for(*r.token, r.base(), present[0]);
  if (old.empty()) return;
  const std::string name = std::string(r.device_ca ? "device-ca" : "station-tls") + "-v" +
                           std::to_string(key_version_of(r.base(), old)) + ".pem";
  std::string text;
  for (const auto& c : present) text += core::to_pem(c);
  pki_detail::write_public(r.config, name, text);
  r.out << "keys: kept the certificate of " << old << " as " << name << "\n";
}

std::string organization_of(const Roll& r) {
  const auto present = pki_detail::read_certs(r.config, pki_file::device_ca);
  const auto o = present.empty() ? std::string() : present[0].subject_dn().get_first_attribute("X520.Organization");
  return o.empty() ? KeysInitOptions{}.organization : o;
}

// A token that holds its own root (plain `keys init`, the demo): the new version is certified here and
// used from now on.
std::string certify_here(Roll& r, const core::Pkcs11EcdsaPrivateKey& key) {
  const bool ca = r.device_ca;
  const auto issuer = pki_detail::read_certs(r.config, ca ? pki_file::root : pki_file::service_ca);
  if (issuer.size() != 1)
    throw core::Error(errc::KeysMissing, std::string("no ") + (ca ? pki_file::root : pki_file::service_ca) + " in " +
                                             r.config.pki_dir + ": run `keyline-station keys init` first");
  const core::Pkcs11EcdsaPrivateKey issuer_key(r.token, ca ? key_label::root : key_label::service_ca);
  const auto cert =
      ca ? core::make_ca_certificate(issuer[0], issuer_key, key, "Manufacturer Device CA v" + std::to_string(r.version),
                                     organization_of(r), 0, r.rng)
         : core::issue_station_certificate(issuer[0], issuer_key, key, r.config.station_id, r.rng);
  const auto replaced = pki_detail::read_certs(r.config, r.cert_file());
  const auto replaced_label = replaced.empty() ? std::string() : key_label_for(*r.token, r.base(), replaced[0]);
  archive_current(r);
  pki_detail::write_public(r.config, r.cert_file(), core::to_pem(cert) + (ca ? "" : core::to_pem(issuer[0])));
  if (ca) pki_detail::renew_oce_cert(r.config, r.token, cert, key, r.out);
  r.out << "keys: wrote " << r.cert_file() << " for " << r.label << " SHA-256 " << cert.fingerprint("SHA-256") << "\n"
        << "keys: " << (ca ? "devices personalized from now on are certified by " : "publishing uses ") << r.label
        << "; certificates issued before still verify under the root\n";
  if (!ca && !replaced_label.empty()) pki_detail::retire_station_cert(r.config, replaced[0], replaced_label, r.label, r.out);
  return r.label + " certified, " + cert.fingerprint("SHA-256");
}

// Under the offline root: a CSR for the ceremony; the station keeps the old version until install-cert.
std::string request_ceremony(Roll& r, const core::Pkcs11EcdsaPrivateKey& key) {
  Botan::X509_DN dn;
  const std::string v = std::to_string(r.version);
  if (r.device_ca) {
    dn.add_attribute("X520.CommonName", r.config.station_id + " Device CA v" + v);
    dn.add_attribute("X520.Organization", organization_of(r));
  } else {
    dn.add_attribute("X520.CommonName", r.config.station_id);
    dn.add_attribute("X520.OrganizationalUnit", core::kStationUnit);
  }
  const std::string file = std::string(r.device_ca ? "device-ca" : "station") + "-v" + v + ".csr";
  pki_detail::write_public(r.config, file, core::make_csr_pem(key, dn, r.rng));
  r.out << "keys: wrote " << file << " (keyline-ceremony sign --profile " << (r.device_ca ? "device-ca" : "station")
        << ")\n"
        << "keys: then keyline-station keys install-cert --root ROOT.pem --cert ...; until then " << r.cert_file()
        << " and its key stay in use\n";
  // install-cert replaces the certificate, not the roll: its entry is for the public DB only after that.
  const auto current = pki_detail::read_certs(r.config, r.cert_file());
  if (!r.device_ca && !current.empty()) {
    r.out << "keys: once install-cert has installed the new certificate, add the replaced one (" << pki_detail::deny_entry(current[0])
          << ") to the public DB's --station-deny file\n";
    const auto old_label = key_label_for(*r.token, r.base(), current[0]);
    if (!old_label.empty()) pki_detail::say_old_key_kept(r.out, old_label);
  }
  return r.label + " CSR " + file;
}

}  // namespace

void keys_roll(const StationConfig& config, const std::string& what, std::ostream& out) {
  if (what == "master") return keys_roll_master(config, out);
  if (what != "device-ca" && what != "station-tls")
    throw core::ConfigError(core::ErrorCode::Usage, "keys roll: master, device-ca or station-tls");
  auto db = custody::open_db(config, ("keys roll " + what).c_str());
  pki_detail::locked(config, out, [&] {
    Roll r{config, custody::open_token(config), out, what == "device-ca", 0, {}, {}};
    const auto versions = private_versions(*r.token, r.base());
    if (versions.empty())
      throw core::Error(errc::KeysMissing, "token '" + config.token_label + "' holds no " + r.base() +
                                               ": run `keyline-station keys init` first");
    r.version = std::max(2, versions.front() + 1);
    r.label = key_version_label(r.base(), r.version);
    custody::audited(db, config, "custody.roll", what + " version " + std::to_string(r.version) + " (" + r.label + ")",
                     [&] {
                       r.token->generate_ec_p256(r.label, version_key_id(r.device_ca, r.version));
                       r.out << "keys: generated " << r.label << " (P-256, sensitive, never extractable) beside "
                             << key_version_label(r.base(), versions.front()) << "\n";
                       const core::Pkcs11EcdsaPrivateKey key(r.token, r.label);
                       return r.token->has_private_key(key_label::root) ? certify_here(r, key)
                                                                        : request_ceremony(r, key);
                     });
  });
}

}  // namespace keyline::station
