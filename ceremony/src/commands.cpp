#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

#include <botan/auto_rng.h>
#include <botan/hash.h>
#include <botan/hex.h>
#include <botan/x509_key.h>

#include "files.h"
#include "keyline/ceremony/ceremony.h"
#include "keyline/ceremony/errors.h"
#include "keyline/ceremony/log.h"
#include "keyline/ceremony/profiles.h"
#include "keyline/ceremony/statement.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/csr.h"
#include "keyline/core/log_format.h"
#include "keyline/core/pkcs11.h"
#include "keyline/core/secret_input.h"

namespace keyline::ceremony {

namespace {

const char* const kRootKeyLabel = "keyline-root";
// A P-256 CSR is a few hundred bytes; anything near this is not one (and is not handed to the decoder).
constexpr std::size_t kMaxCsrBytes = 64 * 1024;

std::string sha256_hex(const core::Bytes& b) {
  return Botan::hex_encode(Botan::HashFunction::create_or_throw("SHA-256")->process(b), false);
}

std::shared_ptr<core::Pkcs11Token> open_root_token(const CeremonyOptions& opt) {
  const auto pin = core::read_secret(opt.pin_file, "KEYLINE_ROOT_PIN");
  if (pin.empty())
    throw core::ConfigError(core::ErrorCode::Usage, "no root token PIN: give --pin-file or KEYLINE_ROOT_PIN_FILE");
  if (opt.hsm_module.empty()) throw core::ConfigError(core::ErrorCode::Usage, "no PKCS#11 module: give --hsm-module");
  return core::Pkcs11Token::open(opt.hsm_module, opt.token_label, pin, 1);
}

std::string cert_digest(const Botan::X509_Certificate& c) { return sha256_hex(c.BER_encode()); }
std::string serial_hex(const Botan::X509_Certificate& c) { return Botan::hex_encode(c.serial_number(), false); }

void refuse_existing_root(const CeremonyOptions& opt, core::Pkcs11Token& token) {
  for (const auto& p : {root_cert_path(opt.dir), log_path(opt.dir)})
    if (files::exists(p)) throw core::Error(errc::RootExists, p + " exists: this ceremony already has a root");
  if (token.has_private_key(kRootKeyLabel) || token.has_public_key(kRootKeyLabel))
    throw core::Error(errc::RootExists, "token '" + opt.token_label + "' already holds a key '" + kRootKeyLabel + "'");
}

std::string line_hash(const LogEntry& e) {
  return Botan::hex_encode(Botan::HashFunction::create_or_throw("SHA-256")->process(to_line(e)), false);
}

// Runs `op` and, whatever it throws, appends the outcome line naming the error before passing it on:
// the log says how every operation it announced ended (audit before and after). `serial` is set by `op`
// once the root has signed: a failure after that (a file not written) still names what was signed.
template <typename Op>
void audited(CeremonyLog& log, const std::string& name, const std::string& intent, const std::string& serial, Op op) {
  const auto fail = [&](const char* result, const std::string& code, const char* reason) {
    Fields f{{"intent", intent}, {"result", result}};
    if (!serial.empty()) f.emplace_back("serial", serial);
    if (!code.empty()) f.emplace_back("error", code);
    f.emplace_back("reason", reason);
    log.append(name, "outcome", f);
  };
  try {
    op();
  } catch (const core::Error& e) {
    const bool refused = e.code() == errc::CsrRefused || e.code() == core::ErrorCode::BadCertificate ||
                         e.code() == core::ErrorCode::CertificateLint || e.code() == errc::StatementRefused ||
                         e.code() == errc::StatementBadFile;
    fail(refused && serial.empty() ? "refused" : "failed", std::to_string(e.numeric()), e.what());
    throw;
  } catch (const std::exception& e) {
    fail("failed", "", e.what());
    throw;
  }
}

// The root's certificate, and the token key that must be its key.
struct Root {
  Botan::X509_Certificate cert;
  std::unique_ptr<Botan::Public_Key> pub;
  std::unique_ptr<core::Pkcs11EcdsaPrivateKey> key;
};

Root open_root(const CeremonyOptions& opt) {
  if (!files::exists(root_cert_path(opt.dir)))
    throw core::Error(errc::RootMissing, "no " + root_cert_path(opt.dir) + ": run init-root first");
  const auto pem = files::read_all(root_cert_path(opt.dir), 1024 * 1024);
  auto certs = core::parse_certificates_pem(std::string(pem.begin(), pem.end()));
  Root r{certs.front(), std::unique_ptr<Botan::Public_Key>(certs.front().subject_public_key()), nullptr};
  r.key = std::make_unique<core::Pkcs11EcdsaPrivateKey>(open_root_token(opt), kRootKeyLabel);
  if (Botan::X509::BER_encode(*r.key) != Botan::X509::BER_encode(*r.pub))
    throw core::Error(errc::RootMismatch, "the token's root key is not the key of " + root_cert_path(opt.dir));
  return r;
}

// The CSR's subject for the intent line, read without trusting it (the checks come after the intent).
std::string csr_subject_hint(const core::Bytes& csr) {
  try {
    return core::parse_csr(csr).subject_dn().to_string();
  } catch (const core::Error&) {
    return "(does not parse or verify)";
  }
}

// One key, one role: a key the root certified before is certified again only as the same subject with
// the same CA flag and EKU (a renewal). Otherwise a Device CA key could also become a station's TLS key.
void refuse_key_reuse(const std::string& dir, const Botan::X509_DN& subject, Profile p, const Botan::PKCS10_Request& req) {
  const std::string issued = dir + "/issued";
  if (!files::exists(issued)) return;
  for (const auto& entry : std::filesystem::directory_iterator(issued)) {
    if (entry.path().extension() != ".pem" || !entry.is_regular_file()) continue;
    for (const auto& c : core::load_certificates_pem(entry.path().string())) {
      if (c.subject_public_key_info() != req.raw_public_key()) continue;
      if (c.subject_dn() == subject && c.is_CA_cert() == profile_is_ca(p) && c.extended_key_usage() == profile_eku(p))
        continue;
      throw core::Error(errc::CsrRefused, "CSR refused: its key already has certificate " + serial_hex(c) + " (" +
                                              c.subject_dn().to_string() + ") in another role: one key, one role");
    }
  }
}

}  // namespace

std::string root_cert_path(const std::string& dir) { return dir + "/root.pem"; }
std::string log_path(const std::string& dir) { return dir + "/ceremony.log"; }

int init_root(const CeremonyOptions& opt, const RootRequest& req, std::ostream& out) {
  if (req.common_name.empty()) throw core::ConfigError(core::ErrorCode::Usage, "--subject-cn is empty");
  if (req.days < 1 || req.days > 36500) throw core::ConfigError(core::ErrorCode::Usage, "--days must be 1..36500");
  files::check_dir(opt.dir, true);
  files::DirLock lock(opt.dir);
  auto token = open_root_token(opt);
  refuse_existing_root(opt, *token);
  Botan::AutoSeeded_RNG rng;
  const auto id = rng.random_vec(16);
  token->generate_ec_p256(kRootKeyLabel, core::Bytes(id.begin(), id.end()));
  core::Pkcs11EcdsaPrivateKey key(token, kRootKeyLabel);
  CeremonyLog log(log_path(opt.dir), key, key, rng);
  const auto intent = log.append("init-root", "intent",
                                 {{"subject_cn", req.common_name}, {"organization", req.organization},
                                  {"days", std::to_string(req.days)}, {"token", opt.token_label},
                                  {"root_key", key_id(key)}});
  const std::string seq = std::to_string(intent.seq);
  std::string signed_serial;
  audited(log, "init-root", seq, signed_serial, [&] {
    const auto cert = make_root(key, req.common_name, req.organization, req.days, rng);
    signed_serial = serial_hex(cert);
    files::write_new(root_cert_path(opt.dir), core::to_pem(cert), 0644);
    const auto done = log.append("init-root", "outcome",
                                 {{"intent", seq}, {"result", "issued"}, {"serial", serial_hex(cert)},
                                  {"cert_sha256", cert_digest(cert)}});
    out << "root certificate " << root_cert_path(opt.dir) << "\n  subject " << cert.subject_dn().to_string()
        << "\n  serial " << serial_hex(cert) << "\n  SHA-256 " << cert_digest(cert) << "\n  key " << key_id(key)
        << "\nlog head (write it down): " << line_hash(done) << "\n";
  });
  return 0;
}

int sign(const CeremonyOptions& opt, const SignRequest& req, std::ostream& out) {
  const Profile profile = profile_from_name(req.profile);
  const long days = req.days == 0 ? default_days(profile) : req.days;
  if (days < 1 || days > max_days(profile))
    throw core::ConfigError(core::ErrorCode::Usage, "--days must be 1.." + std::to_string(max_days(profile)) +
                                                        " for the " + profile_name(profile) + " profile");
  if (req.out_file.empty() || files::exists(req.out_file))
    throw core::ConfigError(core::ErrorCode::Usage, "--out must name a file that does not exist yet");
  files::check_dir(opt.dir, false);
  files::DirLock lock(opt.dir);
  const core::Bytes csr = files::read_all(req.csr_file, kMaxCsrBytes);
  Root root = open_root(opt);
  Botan::AutoSeeded_RNG rng;
  CeremonyLog log(log_path(opt.dir), *root.pub, *root.key, rng);
  const auto intent = log.append("sign", "intent",
                                 {{"profile", profile_name(profile)}, {"csr_sha256", sha256_hex(csr)},
                                  {"csr_subject", csr_subject_hint(csr)}, {"days", std::to_string(days)}});
  const std::string seq = std::to_string(intent.seq);
  std::string signed_serial;
  audited(log, "sign", seq, signed_serial, [&] {
    const auto parsed = core::parse_csr(csr);
    const auto subject = check_request(parsed, profile, *root.pub);
    refuse_key_reuse(opt.dir, subject, profile, parsed);
    files::check_dir(opt.dir + "/issued", true);
    const auto cert = issue(root.cert, *root.key, parsed, subject, profile, days, req.days == 0, rng);
    signed_serial = serial_hex(cert);
    files::write_new(opt.dir + "/issued/" + serial_hex(cert) + ".pem", core::to_pem(cert), 0644);
    files::write_new(req.out_file, core::to_pem(cert), 0644);
    const auto done = log.append("sign", "outcome",
               {{"intent", seq}, {"result", "issued"}, {"serial", serial_hex(cert)},
                {"subject", cert.subject_dn().to_string()}, {"cert_sha256", cert_digest(cert)}});
    out << "issued " << profile_name(profile) << " certificate " << req.out_file << "\n  CSR SHA-256 "
        << sha256_hex(csr) << "\n  subject "
        << cert.subject_dn().to_string() << "\n  serial " << serial_hex(cert)
        << "\nlog head (write it down): " << line_hash(done) << "\n";
  });
  return 0;
}

namespace {

// A statement id the log already records as imported.
bool imported_before(const std::string& log_file, const std::string& id) {
  std::istringstream lines(read_log_file(log_file));
  for (std::string line; std::getline(lines, line);) {
    const auto e = parse_line(line);
    if (!e || e->op != "import" || e->phase != "outcome") continue;
    bool imported = false, same = false;
    for (const auto& [name, value] : e->fields) {
      imported = imported || (name == "result" && value == "imported");
      same = same || (name == "id" && value == id);
    }
    if (imported && same) return true;
  }
  return false;
}

// The intent line names the statement before anything in it is trusted.
Fields statement_hint(const std::string& text, const std::string& digest) {
  Fields f{{"statement_sha256", digest}};
  try {
    const auto st = parse_statement(text);
    f.emplace_back("station_claimed", st.field("station_id"));
    f.emplace_back("event_claimed", st.field("event"));
  } catch (const core::Error&) {
    f.emplace_back("station_claimed", "(does not parse)");
  }
  return f;
}

void import_one(CeremonyLog& log, const Root& root, const std::string& file, std::ostream& out) {
  const core::Bytes bytes = files::read_all(file, 64 * 1024);
  const std::string text(bytes.begin(), bytes.end());
  const auto intent = log.append("import", "intent", statement_hint(text, sha256_hex(bytes)));
  const std::string seq = std::to_string(intent.seq);
  audited(log, "import", seq, "", [&] {
    const auto st = parse_statement(text);
    const auto cert = check_statement(st, root.cert);
    if (imported_before(log.path(), st.field("id")))
      throw core::Error(errc::StatementRefused, "custody statement refused: statement " + st.field("id") +
                                                    " was imported before (a replay)");
    Fields f{{"intent", seq}, {"result", "imported"}};
    for (const auto& m : statement_members()) f.emplace_back(m == "result" ? "op_result" : m, st.field(m));
    f.emplace_back("cert_sha256", cert_digest(cert));
    const auto done = log.append("import", "outcome", f);
    out << "imported " << file << ": " << st.field("event") << " " << st.field("result") << " at station "
        << st.field("station_id") << " (" << st.field("begin") << " .. " << st.field("end") << ")\nlog head (write it down): "
        << line_hash(done) << "\n";
  });
}

}  // namespace

int import_statements(const CeremonyOptions& opt, const std::vector<std::string>& files, std::ostream& out) {
  if (files.empty()) throw core::ConfigError(core::ErrorCode::Usage, "give --statement FILE (repeatable)");
  files::check_dir(opt.dir, false);
  files::DirLock lock(opt.dir);
  Root root = open_root(opt);
  Botan::AutoSeeded_RNG rng;
  CeremonyLog log(log_path(opt.dir), *root.pub, *root.key, rng);
  for (const auto& f : files) import_one(log, root, f, out);
  return 0;
}

int log_verify(const std::string& log_file, const std::string& root_cert, const std::string& head, std::ostream& out) {
  const auto certs = core::load_certificates_pem(root_cert);
  std::unique_ptr<Botan::Public_Key> pub(certs.front().subject_public_key());
  const auto text = read_log_file(log_file);
  if (text.empty()) throw core::Error(errc::LogInvalid, log_file + " is empty or missing");
  auto r = verify_log_text(text, *pub);
  if (!head.empty() && r.findings.empty() && r.last_hash != head)
    r.findings.push_back({r.lines, "the last line is not the head written down (" + head +
                                       "): lines were cut off at the end or added after it"});
  for (const auto& f : r.findings) out << "line " << f.line << ": " << f.reason << "\n";
  for (const auto& w : r.warnings) out << "warning: " << w << "\n";
  if (!r.findings.empty())
    throw core::Error(errc::LogInvalid, "the ceremony log does not verify: line " +
                                            std::to_string(r.findings.front().line) + ": " + r.findings.front().reason);
  out << "ok: " << r.lines << " lines, sequence 1.." << r.last_seq << ", every line signed by root key "
      << key_id(*pub) << "\nhead " << r.last_hash << "\n";
  return 0;
}

int log_show(const std::string& log_file, std::ostream& out) {
  out << show_log_text(read_log_file(log_file));
  return 0;
}

int exit_code_for(core::ErrorCode code) noexcept {
  switch (static_cast<int>(code)) {
    case 7001: case 7010: case 7050: return core::exit_code::refused;
    case 7051: return core::exit_code::bad_input;
    case 7002: case 7030: return core::exit_code::usage;
    case 7003: return core::exit_code::hsm;
    case 7020: return core::exit_code::bad_input;
    case 7021: case 7040: return core::exit_code::failure;
    default: return core::exit_code_for(code);
  }
}

int run_guarded(const std::function<int()>& body) noexcept {
  try {
    return body();
  } catch (const core::Error& e) {
    core::log::say("keyline-ceremony: error " + std::to_string(e.numeric()) + ": " + e.what());
    return ceremony::exit_code_for(e.code());
  } catch (const std::exception& e) {
    core::log::say(std::string("keyline-ceremony: error: ") + e.what());
    return core::exit_code::failure;
  } catch (...) {
    core::log::say("keyline-ceremony: error: unknown failure");
    return core::exit_code::failure;
  }
}

}  // namespace keyline::ceremony
