// `keys status`: every key on the token, every certificate in the PKI directory, the mirror state.
#include <chrono>
#include <filesystem>
#include <sstream>

#include "keyline/core/cert_profile.h"
#include "keyline/core/http.h"
#include "keys_custody_internal.h"
#include "keyline/station/keys.h"
#include "keyline/station/pool.h"

namespace keyline::station {

namespace {

namespace fs = std::filesystem;

struct CertInfo {
  std::string file, subject, issuer, not_after;
  long days_left = 0;
};

std::vector<CertInfo> certificates(const StationConfig& config) {
  std::vector<CertInfo> out;
  if (!fs::is_directory(config.pki_dir)) return out;
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(config.pki_dir))
    if (e.path().extension() == ".pem") files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  const auto now = std::chrono::system_clock::now();
  for (const auto& name : files) {
    std::vector<Botan::X509_Certificate> certs;
    try {
      certs = core::load_certificates_pem(pki_path(config, name.c_str()));
    } catch (const core::Error&) {
      continue;  // a key file or something else: not a certificate
    }
    for (const auto& c : certs) {
      const auto left = std::chrono::duration_cast<std::chrono::hours>(c.not_after().to_std_timepoint() - now);
      out.push_back({name, c.subject_dn().get_first_attribute("X520.CommonName"),
                     c.issuer_dn().get_first_attribute("X520.CommonName"), c.not_after().readable_string(),
                     static_cast<long>(left.count() / 24)});
    }
  }
  return out;
}

struct Transfer {
  std::string direction, op, label, version, from_serial, to_serial, from_station, to_station, at;
};

// Nothing, and says so, when no database is configured: the rest of the status needs none.
std::optional<std::vector<Transfer>> transfers(const StationConfig& config) {
  if (config.db.empty()) return std::nullopt;
  core::pq::Connection db(config.db);
  migrate_station_db(db);
  const auto r = db.exec(
      "SELECT direction, op, key_label, version, from_serial, to_serial, from_station, to_station, at"
      " FROM secret.key_transfer ORDER BY at, manifest_id");
  std::vector<Transfer> out;
  for (int i = 0; i < r.rows(); ++i)
    out.push_back({r.text(i, 0), r.text(i, 1), r.text(i, 2), r.text(i, 3), r.text(i, 4), r.text(i, 5), r.text(i, 6),
                   r.text(i, 7), r.text(i, 8)});
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}

std::string q(const std::string& s) { return "\"" + core::http::json_escape(s) + "\""; }
const char* b(bool v) { return v ? "true" : "false"; }

void key_json(std::ostream& o, const core::Pkcs11KeyInfo& k) {
  std::string usages;
  for (const auto& u : k.usages) usages += (usages.empty() ? "" : ",") + q(u);
  const int v = custody::version_of_label(k.label);
  o << "{\"label\":" << q(k.label) << ",\"class\":" << q(k.object_class) << ",\"type\":" << q(k.key_type)
    << ",\"version\":" << (v ? std::to_string(v) : "null") << ",\"usages\":[" << usages << "],\"sensitive\":"
    << b(k.sensitive) << ",\"extractable\":" << b(k.extractable) << ",\"wrap_with_trusted\":" << b(k.wrap_with_trusted)
    << ",\"never_extractable\":" << b(k.never_extractable) << ",\"trusted\":" << b(k.trusted)
    << ",\"local\":" << b(k.local) << "}";
}

void print_json(std::ostream& o, const StationConfig& config, const std::string& serial,
                const std::vector<core::Pkcs11KeyInfo>& keys, const std::vector<CertInfo>& certs,
                const std::optional<std::vector<Transfer>>& xfers) {
  o << "{\"token\":" << q(config.token_label) << ",\"serial\":" << q(serial) << ",\"keys\":[";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i) o << ",";
    key_json(o, keys[i]);
  }
  o << "],\"certificates\":[";
  for (std::size_t i = 0; i < certs.size(); ++i)
    o << (i ? "," : "") << "{\"file\":" << q(certs[i].file) << ",\"subject\":" << q(certs[i].subject)
      << ",\"issuer\":" << q(certs[i].issuer) << ",\"not_after\":" << q(certs[i].not_after)
      << ",\"days_left\":" << certs[i].days_left << "}";
  o << "],\"mirror\":";
  if (!xfers) {
    o << "null";
  } else {
    o << "[";
    for (std::size_t i = 0; i < xfers->size(); ++i) {
      const auto& t = (*xfers)[i];
      o << (i ? "," : "") << "{\"direction\":" << q(t.direction) << ",\"op\":" << q(t.op) << ",\"label\":" << q(t.label)
        << ",\"version\":" << t.version << ",\"from_serial\":" << q(t.from_serial) << ",\"to_serial\":"
        << q(t.to_serial) << ",\"from_station\":" << q(t.from_station) << ",\"to_station\":" << q(t.to_station)
        << ",\"at\":" << q(t.at) << "}";
    }
    o << "]";
  }
  o << "}\n";
}

void print_text(std::ostream& o, const StationConfig& config, const std::string& serial,
                const std::vector<core::Pkcs11KeyInfo>& keys, const std::vector<CertInfo>& certs,
                const std::optional<std::vector<Transfer>>& xfers) {
  o << "token '" << config.token_label << "' serial " << serial << "\n";
  for (const auto& k : keys) {
    const int v = custody::version_of_label(k.label);
    o << "  key " << k.label << " " << k.object_class << " " << k.key_type << (v ? " v" + std::to_string(v) : "")
      << " usages " << (k.usages.empty() ? "none" : join(k.usages)) << (k.sensitive ? " sensitive" : "")
      << (k.extractable ? " extractable" : "")
      << (k.wrap_with_trusted ? " wrap-with-trusted" : "") << (k.never_extractable ? " never-extractable" : "")
      << (k.trusted ? " trusted" : "") << "\n";
  }
  for (const auto& c : certs)
    o << "  cert " << c.file << " " << c.subject << " issued by " << c.issuer << " until " << c.not_after << " ("
      << c.days_left << " days)\n";
  if (!xfers) {
    o << "  mirror state unknown: no station database configured (--db or KEYLINE_STATION_DB)\n";
    return;
  }
  for (const auto& t : *xfers)
    o << "  mirror " << t.direction << " " << t.label << " (" << t.op << ") " << t.from_station << "/" << t.from_serial
      << " -> " << t.to_station << "/" << t.to_serial << " at " << t.at << "\n";
  if (xfers->empty()) o << "  mirror: nothing sent or received\n";
}

}  // namespace

void keys_status(const StationConfig& config, bool json, std::ostream& out) {
  auto token = custody::open_token(config);
  const auto keys = token->list_keys();
  const auto certs = certificates(config);
  const auto xfers = transfers(config);
  (json ? print_json : print_text)(out, config, token->serial(), keys, certs, xfers);
}

}  // namespace keyline::station
