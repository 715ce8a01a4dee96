#include "keyline/station/keys.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>

#include <botan/auto_rng.h>
#include <botan/base64.h>
#include <botan/data_src.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/hash.h>
#include <botan/hex.h>
#include <botan/pkcs8.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/csr.h"
#include "keyline/core/error.h"
#include "keyline/station/custody.h"
#include "keyline/station/errors.h"
#include "keys_internal.h"
#include "oce.h"

namespace keyline::station {

namespace fs = std::filesystem;


std::vector<std::string> server_names(const KeysInitOptions& options) {
  if (options.dns_names.empty() && options.ip_addresses.empty()) return {"127.0.0.1", "localhost"};
  std::vector<std::string> names;
  for (const auto& ip : options.ip_addresses) {
    if (!core::is_ipv4_literal(ip))
      throw core::ConfigError(core::ErrorCode::Usage, "--ip '" + ip + "' is not an IPv4 address");
    names.push_back(ip);
  }
  for (const auto& dns : options.dns_names) {
    if (!core::is_valid_dns_name(dns))
      throw core::ConfigError(core::ErrorCode::Usage, "--dns '" + dns + "' is not a host name (RFC 1123)");
    names.push_back(dns);
  }
  return names;
}

namespace {

[[noreturn]] void io_fail(const std::string& what, const std::string& path) {
  throw core::IoError(core::ErrorCode::Io, what + " " + path + ": " + std::strerror(errno));
}

// ---- Who may change the PKI directory ----
// The station trusts what is in it: tls-ca.pem decides which public DB it counts a device published
// to, and the server key pairs are handed to those servers. So the directory and its files must be
// this user's and writable by no one else, and every directory above it root's or this user's and not
// writable by others unless sticky (there only an entry's owner may rename or remove it, unlink(2)).

std::string join(const StationConfig& config, const char* file) { return (fs::path(config.pki_dir) / file).string(); }

[[noreturn]] void unsafe(const std::string& path, const std::string& why) {
  throw core::Error(errc::PkiUnsafe, path + " " + why +
                                         ": the station trusts its PKI directory only when no other user can "
                                         "change it (docs/station.md, \"Keys\")");
}

std::string mode_text(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

constexpr mode_t kOthersWrite = S_IWGRP | S_IWOTH;

// The PKI directory itself and the files in it.
void check_own(const std::string& path, const struct stat& st) {
  if (st.st_uid != ::geteuid())
    unsafe(path, "is owned by uid " + std::to_string(st.st_uid) + ", not by this user (uid " +
                     std::to_string(::geteuid()) + ")");
  if ((st.st_mode & kOthersWrite) != 0)
    unsafe(path, "is writable by group or others (mode " + mode_text(st.st_mode) + ")");
}

// A directory on the way to it (or a symbolic link there, checked with lstat).
void check_above(const std::string& path, const struct stat& st) {
  if (st.st_uid != 0 && st.st_uid != ::geteuid())
    unsafe(path, "is owned by uid " + std::to_string(st.st_uid) + ", neither root nor this user");
  if (S_ISDIR(st.st_mode) && (st.st_mode & kOthersWrite) != 0 && (st.st_mode & S_ISVTX) == 0)
    unsafe(path, "is writable by group or others (mode " + mode_text(st.st_mode) + ") and not sticky");
}

// The directory as given, absolute, without "." or ".." or a trailing "/".
fs::path absolute_dir(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  return p.has_filename() || p == p.root_path() ? p : p.parent_path();
}

// Every prefix of an absolute path, itself last: "/", "/a", "/a/b" for "/a/b".
std::vector<fs::path> prefixes(const fs::path& p) {
  std::vector<fs::path> out;
  fs::path at;
  for (const auto& part : p) {
    at /= part;
    out.push_back(at);
  }
  return out;
}

// The directory's real path once it and the way to it are safe; nothing when it does not exist.
// Both the path as given and the real one are walked: a link on the way (the directory's own name
// too) is checked where it lies, and may lead out of a safe tree.
std::optional<std::string> checked_pki_dir(const std::string& dir) {
  const fs::path given = absolute_dir(dir);
  for (const auto& p : prefixes(given)) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) {
      if (errno == ENOENT) return std::nullopt;
      io_fail("cannot examine", p.string());
    }
    if (p != given || S_ISLNK(st.st_mode)) check_above(p.string(), st);  // the directory itself: below
  }
  char real[PATH_MAX];
  if (::realpath(given.c_str(), real) == nullptr) {
    if (errno == ENOENT) return std::nullopt;
    io_fail("cannot resolve", given.string());
  }
  auto above = prefixes(real);
  above.pop_back();
  for (const auto& p : above) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) io_fail("cannot examine", p.string());
    check_above(p.string(), st);
  }
  struct stat st {};
  if (::stat(real, &st) != 0) io_fail("cannot examine", real);
  if (!S_ISDIR(st.st_mode)) unsafe(given.string(), "is not a directory");
  check_own(given.string(), st);
  return std::string(real);
}

// One file in it, when present: a regular file (a link could name anything), this user's, and
// writable by no one else.
void check_pki_file(const std::string& path, const struct stat& st) {
  if (S_ISLNK(st.st_mode)) unsafe(path, "is a symbolic link");
  if (!S_ISREG(st.st_mode)) unsafe(path, "is not a regular file");
  check_own(path, st);
}

// The missing directories of the path made 0700 (mkdir's mode goes through the umask, chmod does not),
// then the whole way checked.
std::string make_pki_dir(const std::string& dir) {
  const fs::path given = absolute_dir(dir);
  for (const auto& p : prefixes(given)) {
    if (::mkdir(p.c_str(), 0700) == 0) {
      if (::chmod(p.c_str(), 0700) != 0) io_fail("cannot set the mode of", p.string());
    } else if (errno != EEXIST) {
      io_fail("cannot create", p.string());
    }
  }
  const auto real = checked_pki_dir(dir);
  if (!real) io_fail("cannot create", given.string());
  return *real;
}

struct PkiFile {
  Botan::secure_vector<std::uint8_t> bytes;
  mode_t mode = 0;
};

// A file of the PKI directory, opened without following a link, or nothing when it is missing.
std::optional<PkiFile> read_pki_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    if (errno == ELOOP) unsafe(path, "is a symbolic link");
    io_fail("cannot open", path);
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) io_fail("cannot examine", path);
  check_pki_file(path, st);
  PkiFile f;
  f.mode = st.st_mode;
  std::uint8_t buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) io_fail("cannot read", path);
    if (n == 0) break;
    f.bytes.insert(f.bytes.end(), buf, buf + n);
  }
  Botan::secure_scrub_memory(buf, sizeof buf);
  return f;
}

std::string text_of(const PkiFile& f) { return std::string(f.bytes.begin(), f.bytes.end()); }

// Held for a whole `keys init` / `keys server-cert`: two runs would both find a key missing and both
// generate it (after which every lookup of that label fails), and one run's clean-up would remove the
// other's temp files. A second run waits (flock(2); released when the holder exits, however it exits).
class PkiLock {
 public:
  PkiLock(const std::string& real_dir, std::ostream& out) {
    const int dfd = ::open(real_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) io_fail("cannot open directory", real_dir);
    struct stat st {};
    const bool seen = ::fstat(dfd, &st) == 0;
    if (seen) check_own(real_dir, st);  // the directory opened is the one checked, whatever moved since
    m_fd = seen ? ::openat(dfd, kLockFile, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600) : -1;
    ::close(dfd);
    const std::string path = (fs::path(real_dir) / kLockFile).string();
    if (m_fd < 0) io_fail("cannot open the lock file", path);
    if (::fstat(m_fd, &st) != 0 || !S_ISREG(st.st_mode)) io_fail("cannot use the lock file", path);
    if (::flock(m_fd, LOCK_EX | LOCK_NB) == 0) return;
    if (errno != EWOULDBLOCK) io_fail("cannot lock", path);
    out << "keys: waiting for another keys run on " << real_dir << " (" << path << ")\n" << std::flush;
    while (::flock(m_fd, LOCK_EX) != 0)
      if (errno != EINTR) io_fail("cannot lock", path);
  }
  ~PkiLock() { ::close(m_fd); }
  PkiLock(const PkiLock&) = delete;
  PkiLock& operator=(const PkiLock&) = delete;

  static constexpr const char* kLockFile = ".keys.lock";

 private:
  int m_fd = -1;
};

// Atomic and never readable by others on the way: the temp file is created by mkostemp (O_CREAT|O_EXCL,
// mode 0600 whatever the umask) in the target's directory, written, fsynced, given its final mode, renamed
// over the target, and the directory is fsynced so the rename survives a crash (rename(2), fsync(2)).
void write_file(const std::string& path, const std::uint8_t* data, std::size_t size, mode_t mode) {
  std::string tmp = path + ".tmp-XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) io_fail("cannot create a temporary file for", path);
  bool ok = true;
  for (std::size_t done = 0; ok && done < size;) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<std::size_t>(n);
  }
  ok = ok && ::fchmod(fd, mode) == 0 && ::fsync(fd) == 0;
  ok = ::close(fd) == 0 && ok;
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int saved = errno;
    ::unlink(tmp.c_str());
    errno = saved;
    io_fail("cannot write", path);
  }
  const std::string dir = fs::path(path).parent_path().empty() ? "." : fs::path(path).parent_path().string();
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) io_fail("cannot open directory", dir);
  const bool synced = ::fsync(dfd) == 0;
  ::close(dfd);
  if (!synced) io_fail("cannot sync directory", dir);
}

void write_file(const std::string& path, const std::string& text, mode_t mode) {
  write_file(path, reinterpret_cast<const std::uint8_t*>(text.data()), text.size(), mode);
}

// PKCS#8 PEM (RFC 7468 section 10) built in a secure buffer: Botan's PEM encoder returns a std::string.
Botan::secure_vector<std::uint8_t> private_key_pem(const Botan::Private_Key& key) {
  const Botan::secure_vector<std::uint8_t> der = Botan::PKCS8::BER_encode(key);
  Botan::secure_vector<std::uint8_t> b64(Botan::base64_encode_max_output(der.size()));
  std::size_t consumed = 0;
  b64.resize(Botan::base64_encode(reinterpret_cast<char*>(b64.data()), der.data(), der.size(), consumed, true));
  static const std::string begin = "-----BEGIN PRIVATE KEY-----\n", end = "-----END PRIVATE KEY-----\n";
  Botan::secure_vector<std::uint8_t> pem(begin.begin(), begin.end());
  for (std::size_t i = 0; i < b64.size(); i += 64) {
    pem.insert(pem.end(), b64.begin() + i, b64.begin() + std::min(b64.size(), i + 64));
    pem.push_back('\n');
  }
  pem.insert(pem.end(), end.begin(), end.end());
  return pem;
}

std::string fingerprint(const Botan::X509_Certificate& c) { return c.fingerprint("SHA-256"); }

// The certificates of a PEM file, or none when it is missing or does not parse (it is then re-made).
std::vector<Botan::X509_Certificate> read_pem(const std::string& path) {
  const auto f = read_pki_file(path);
  if (!f) return {};
  try {
    return core::parse_certificates_pem(text_of(*f));
  } catch (const core::Error&) {
    return {};
  }
}

bool signed_by(const Botan::X509_Certificate& cert, const Botan::Public_Key& issuer_key) {
  try {
    return cert.verify_signature(issuer_key) == Botan::Certificate_Status_Code::VERIFIED;
  } catch (const Botan::Exception&) {
    return false;
  }
}

bool holds_key(const Botan::X509_Certificate& cert, const Botan::Public_Key& key) {
  return cert.subject_public_key_info() == key.subject_public_key();
}

// A TLS certificate is renewed before it lapses rather than on the day publishing stops.
bool lasts(const Botan::X509_Certificate& cert) {
  return cert.not_after() > Botan::X509_Time(std::chrono::system_clock::now() + std::chrono::hours(24 * 30));
}

// What one `keys init` run works with, and whether it changed anything.
struct Init {
  const StationConfig& config;
  const KeysInitOptions& options;
  std::shared_ptr<core::Pkcs11Token> token;
  std::ostream& out;
  Botan::AutoSeeded_RNG rng;
  bool changed = false;

  // Not pki_path: the directory is checked and locked, and each file is checked as it is read.
  std::string path(const char* file) const { return join(config, file); }
  void wrote(const char* file, const std::string& why) {
    changed = true;
    out << "keys: wrote " << path(file) << " (" << why << ")\n";
  }
};

// A reused key keeps the attributes it was made with: one made before every template named every usage
// (or by another tool) may allow more than its role. Said, not changed: CKA_MODIFIABLE may forbid that,
// and only a fresh token makes the key anew.
void note_wider_usage(Init& in, const char* label, const std::vector<std::string>& role) {
  std::string extra;
  for (const auto& u : in.token->key_usages(label))
    if (std::find(role.begin(), role.end(), u) == role.end()) extra += (extra.empty() ? "" : ", ") + u;
  if (!extra.empty())
    in.out << "keys: warning: " << label << " on the token also allows " << extra
           << " (made before keyline named every usage); keys made on a fresh token allow only their role\n";
}

std::unique_ptr<core::Pkcs11EcdsaPrivateKey> ensure_ec_key(Init& in, const char* label, std::uint8_t id) {
  const bool priv = in.token->has_private_key(label), pub = in.token->has_public_key(label);
  if (priv != pub)
    throw core::Error(errc::KeysMissing, std::string("token '") + in.config.token_label + "' holds the " +
                                             (priv ? "private" : "public") + " half of '" + label +
                                             "' without the other: delete it (pkcs11-tool --delete-object) and "
                                             "run `keyline-station keys init` again");
  if (priv) {
    in.out << "keys: reused " << label << " (already on token '" << in.config.token_label << "')\n";
    note_wider_usage(in, label, {"sign", "verify"});
  } else {
    in.token->generate_ec_p256(label, core::Bytes{id});
    in.changed = true;
    in.out << "keys: generated " << label << " (P-256, sensitive, never extractable) on token '"
           << in.config.token_label << "'\n";
  }
  return std::make_unique<core::Pkcs11EcdsaPrivateKey>(in.token, label);
}

// After a roll the certificate installed names the version in use (docs/custody.md, "Roll"): a run of
// `keys init` keeps it rather than certifying version 1 again.
std::unique_ptr<core::Pkcs11EcdsaPrivateKey> ensure_active_key(Init& in, const char* base, std::uint8_t id,
                                                               const char* cert_file) {
  auto key = ensure_ec_key(in, base, id);
  const auto present = read_pem(in.path(cert_file));
  const auto label = present.empty() ? std::string() : key_label_for(*in.token, base, present[0]);
  if (label.empty() || label == base) return key;
  in.out << "keys: " << in.path(cert_file) << " is for " << label << " (rolled)\n";
  return std::make_unique<core::Pkcs11EcdsaPrivateKey>(in.token, label);
}

// The SCP11a OCE key (docs/station.md, "The channel"): ECDH only, so it can never sign a certificate
// or a note however the token is asked.
void ensure_oce_key(Init& in) {
  if (in.token->has_private_key(key_label::oce)) {
    in.out << "keys: reused " << key_label::oce << " (already on the token)\n";
    note_wider_usage(in, key_label::oce, {"derive"});
    return;
  }
  in.token->generate_ec_p256_ecdh(key_label::oce, core::Bytes{5});
  in.changed = true;
  in.out << "keys: generated " << key_label::oce << " (P-256 ECDH only, the SCP11a OCE key) on the token\n";
}

// Kept while it is this profile's certificate for the token's OCE key from this Device CA.
void ensure_oce_cert(Init& in, const Botan::X509_Certificate& device_ca, const core::Pkcs11EcdsaPrivateKey& ca_key) {
  const auto oce_key = in.token->ec_public_key(key_label::oce);
  const auto found = read_pem(in.path(pki_file::oce));
  if (found.size() == 1 && is_current_oce_certificate(found[0], device_ca, *oce_key, in.config.station_id)) return;
  const auto cert = issue_oce_certificate(device_ca, ca_key, *oce_key, in.config.station_id, in.rng);
  write_file(in.path(pki_file::oce), core::to_pem(cert), 0644);
  in.wrote(pki_file::oce, found.empty() ? "missing" : "not for this OCE key, Device CA and station id");
}

void ensure_secret_keys(Init& in) {
  if (in.token->has_secret_key(key_label::master)) {
    in.out << "keys: reused " << key_label::master << " (already on the token)\n";
    note_wider_usage(in, key_label::master, {"sign"});
  } else {
    in.token->generate_hmac_key(key_label::master);
    in.changed = true;
    in.out << "keys: generated " << key_label::master << " (HMAC-SHA256 derivation key) on the token\n";
  }
  if (in.token->has_secret_key(key_label::wrap)) {
    in.out << "keys: reused " << key_label::wrap << " (already on the token)\n";
    note_wider_usage(in, key_label::wrap, {"encrypt", "decrypt"});
  } else {
    in.token->generate_aes_key(key_label::wrap);
    in.changed = true;
    in.out << "keys: generated " << key_label::wrap << " (AES-256 wrapping key) on the token\n";
  }
}

Botan::X509_Certificate ensure_root(Init& in, const core::Pkcs11EcdsaPrivateKey& key) {
  const auto found = read_pem(in.path(pki_file::root));
  if (found.size() == 1 && found[0].is_CA_cert() && holds_key(found[0], key) && signed_by(found[0], key))
    return found[0];
  const auto root = core::make_root_certificate(key, "Manufacturer Root", in.options.organization, in.rng);
  write_file(in.path(pki_file::root), core::to_pem(root), 0644);
  in.wrote(pki_file::root, found.empty() ? "missing" : "did not match the root key");
  return root;
}

// A subordinate CA certificate under the root: kept when it holds `key` and the root key signed it.
Botan::X509_Certificate ensure_ca(Init& in, const char* file, const Botan::X509_Certificate& root,
                                  const core::Pkcs11EcdsaPrivateKey& root_key, const core::Pkcs11EcdsaPrivateKey& key,
                                  const std::string& cn) {
  const auto found = read_pem(in.path(file));
  if (found.size() == 1 && found[0].is_CA_cert() && holds_key(found[0], key) && signed_by(found[0], root_key) &&
      found[0].issuer_dn() == root.subject_dn())
    return found[0];
  const auto ca = core::make_ca_certificate(root, root_key, key, cn, in.options.organization, 0, in.rng);
  write_file(in.path(file), core::to_pem(ca), 0644);
  in.wrote(file, found.empty() ? "missing" : "did not match the token's keys");
  return ca;
}

void ensure_text(Init& in, const char* file, const std::string& text) {
  const auto present = read_pki_file(in.path(file));
  if (present && text_of(*present) == text) return;
  write_file(in.path(file), text, 0644);
  in.wrote(file, "missing or out of date");
}

void ensure_station_cert(Init& in, const Botan::X509_Certificate& service_ca,
                         const core::Pkcs11EcdsaPrivateKey& service_key, const core::Pkcs11EcdsaPrivateKey& key) {
  const auto found = read_pem(in.path(pki_file::station_tls));
  bool good = found.size() == 2 && found[1] == service_ca && holds_key(found[0], key) &&
              signed_by(found[0], service_key) && lasts(found[0]);
  if (good) {
    try {
      good = core::read_station_id(found[0]) == in.config.station_id;
    } catch (const core::Error&) {
      good = false;  // made before the station profile existed
    }
  }
  if (good) return;
  const auto cert = core::issue_station_certificate(service_ca, service_key, key, in.config.station_id, in.rng);
  write_file(in.path(pki_file::station_tls), core::to_pem(cert) + core::to_pem(service_ca), 0644);
  in.wrote(pki_file::station_tls, "station profile, station id " + in.config.station_id);
}

// Names asked for with --dns/--ip that a kept server certificate lacks: said, not acted on, so that a
// completed init run again changes nothing (docs/station.md: `keys server-cert` re-issues).
void note_missing_names(Init& in, const char* cert_file, const Botan::X509_Certificate& cert) {
  if (in.options.dns_names.empty() && in.options.ip_addresses.empty()) return;
  const auto alt = cert.subject_alt_name().get_attributes();
  for (const auto& n : server_names(in.options)) {
    const std::pair<const std::string, std::string> want(core::is_ipv4_literal(n) ? "IP" : "DNS", n);
    if (std::find(alt.begin(), alt.end(), want) == alt.end())
      in.out << "keys: " << in.path(cert_file) << " does not name " << n
             << ": `keyline-station keys server-cert` re-issues it\n";
  }
}

// Why the server certificate and key pair in these files cannot stay, or an empty string.
std::string server_pair_problem(Init& in, const char* cert_file, const char* key_file,
                                const Botan::X509_Certificate& service_ca, const Botan::Public_Key& service_key) {
  const auto certs = read_pem(in.path(cert_file));
  const auto key_pem = read_pki_file(in.path(key_file));
  if (certs.size() != 2 || !key_pem) return "missing";
  if ((key_pem->mode & 0077) != 0) return "the key file was readable by others";
  if (!(certs[1] == service_ca) || !signed_by(certs[0], service_key)) return "not from this service CA";
  if (!lasts(certs[0])) return "expires within 30 days";
  try {
    core::lint_server_certificate(certs[0]);
    Botan::DataSource_Memory src(key_pem->bytes);
    const auto key = Botan::PKCS8::load_key(src);
    if (!holds_key(certs[0], *key)) return "the key file does not match the certificate";
  } catch (const std::exception&) {
    return "not a server certificate and key of this profile";
  }
  note_missing_names(in, cert_file, certs[0]);
  return {};
}

// Server keys of the public DB and the KPS are their own, not the manufacturer's: they are made here for
// the embedded default and handed to those servers as files (0600 from the first byte).
void ensure_server(Init& in, const char* cert_file, const char* key_file, const std::string& cn,
                   const Botan::X509_Certificate& service_ca, const core::Pkcs11EcdsaPrivateKey& service_key) {
  const auto& only = in.options.reissue_for;
  const bool reissue = in.options.reissue_server_certs &&
                       (only.empty() || std::find(only.begin(), only.end(), cn.substr(cn.find('-') + 1)) != only.end());
  std::string why = reissue ? "re-issued on request"
                                                    : server_pair_problem(in, cert_file, key_file, service_ca,
                                                                          service_key);
  if (why.empty()) return;
  Botan::ECDSA_PrivateKey key(in.rng, Botan::EC_Group("secp256r1"));
  const auto cert = core::issue_tls_certificate(service_ca, service_key, key, cn, server_names(in.options),
                                                core::TlsRole::Server, in.rng);
  const auto pem = private_key_pem(key);
  write_file(in.path(key_file), pem.data(), pem.size(), 0600);
  write_file(in.path(cert_file), core::to_pem(cert) + core::to_pem(service_ca), 0644);
  in.wrote(key_file, "new server key, 0600");
  in.wrote(cert_file, why);
}

// A run killed between creating a temp file and renaming it leaves `<file>.tmp-XXXXXX` (0600, perhaps a
// server key): removed before anything else is written.
void remove_stale_temps(Init& in) {
  for (const auto& e : fs::directory_iterator(in.config.pki_dir)) {
    const std::string name = e.path().filename().string();
    const auto at = name.rfind(".tmp-");
    if (at == std::string::npos || name.size() != at + 11 || !e.is_regular_file()) continue;
    fs::remove(e.path());
    in.out << "keys: removed " << e.path().string() << " (left by an interrupted run)\n";
  }
}

// ---- The offline root (docs/station.md, "Keys under an offline root") ----

// The two modes do not mix: a station whose token made its own root trusts that root, and a certificate
// installed from the ceremony would sit beside a Device CA the local root signed.
void refuse_local_root(core::Pkcs11Token& token, const StationConfig& config) {
  if (token.has_private_key(key_label::root))
    throw core::Error(errc::KeysExist, "token '" + config.token_label + "' holds a root key (" + key_label::root +
                                           ", made by `keys init` without --offline-root): its station keeps its "
                                           "own root; use a fresh token for a station under the offline root");
}

std::string device_ca_cn(const StationConfig& config) { return config.station_id + " Device CA"; }

// A rolled Device CA is named apart from the one before (docs/custody.md, "Roll"): an issuer found by
// name alone is then never the other version.
std::string device_ca_cn(const StationConfig& config, const std::string& key_label) {
  const int version = key_version_of(key_label::device_ca, key_label);
  return version > 1 ? device_ca_cn(config) + " v" + std::to_string(version) : device_ca_cn(config);
}

// A CSR is rewritten only when missing or no longer for the token's key, so a repeated run changes nothing.
void ensure_csr(Init& in, const char* file, const core::Pkcs11EcdsaPrivateKey& key, const Botan::X509_DN& subject) {
  const auto present = read_pki_file(in.path(file));
  if (present) {
    try {
      const auto req = core::parse_csr(core::Bytes(present->bytes.begin(), present->bytes.end()));
      if (req.raw_public_key() == key.subject_public_key() && req.subject_dn() == subject) return;
    } catch (const core::Error&) {
      // does not parse: re-made below
    }
  }
  write_file(in.path(file), core::make_csr_pem(key, subject, in.rng), 0644);
  in.wrote(file, present ? "did not match the token's key" : "missing");
}

std::string key_id(const Botan::Public_Key& key) {
  const auto spki = key.subject_public_key();
  return Botan::hex_encode(Botan::HashFunction::create_or_throw("SHA-256")->process(spki)).substr(0, 16);
}

[[noreturn]] void refuse_cert(const std::string& file, const std::string& why) {
  throw core::Error(errc::CertRefused, file + " refused: " + why + "; nothing installed");
}

bool expired(const Botan::X509_Certificate& cert) {
  return cert.not_after() <= Botan::X509_Time(std::chrono::system_clock::now());
}

// The Device CA profile the ceremony issues (docs/ceremony.md, "Profiles"): CA, path length 0,
// keyCertSign, and the subject its CSR asked for.
void check_device_ca_profile(const std::string& file, const Botan::X509_Certificate& cert, const StationConfig& config,
                             const std::string& key_label) {
  if (!cert.is_CA_cert() || cert.path_limit() != 0)
    refuse_cert(file, "it carries the Device CA key but is not a CA certificate with path length 0 (profile device-ca)");
  if (!cert.allowed_usage(Botan::KEY_CERT_SIGN)) refuse_cert(file, "its keyUsage lacks keyCertSign (profile device-ca)");
  const auto cn = cert.subject_dn().get_first_attribute("X520.CommonName");
  const auto want = device_ca_cn(config, key_label);
  if (cn != want) refuse_cert(file, "its CN '" + cn + "' is not '" + want + "'");
}

void check_station_profile(const std::string& file, const Botan::X509_Certificate& cert, const StationConfig& config) {
  try {
    core::lint_station_certificate(cert);
    const auto id = core::read_station_id(cert);
    if (id != config.station_id) refuse_cert(file, "it names station '" + id + "', not '" + config.station_id + "'");
  } catch (const core::Error& e) {
    if (e.code() == errc::CertRefused) throw;
    refuse_cert(file, std::string("it carries the station TLS key but is not of the station profile: ") + e.what());
  }
}

struct Installing {
  std::optional<Botan::X509_Certificate> device_ca, station, service_ca;
};

std::string service_ca_cn(const StationConfig& config) { return config.station_id + " Service CA"; }

// The station's service CA (docs/ceremony.md, profile service-ca): it issues the public DB's and the
// KPS's server certificates here, so the root never has to sign a server key.
void check_service_ca_profile(const std::string& file, const Botan::X509_Certificate& cert, const StationConfig& config) {
  if (!cert.is_CA_cert() || cert.path_limit() != 0 || !cert.allowed_usage(Botan::KEY_CERT_SIGN))
    refuse_cert(file, "it carries the service CA key but is not a CA certificate with path length 0 and keyCertSign "
                      "(profile service-ca)");
  const auto cn = cert.subject_dn().get_first_attribute("X520.CommonName");
  if (cn != service_ca_cn(config)) refuse_cert(file, "its CN '" + cn + "' is not '" + service_ca_cn(config) + "'");
}

// One --cert file: its key decides its role, then chain and profile.
void classify(Installing& inst, const std::string& file, const Botan::X509_Certificate& root,
              const core::Pkcs11EcdsaPrivateKey& ca_key, const core::Pkcs11EcdsaPrivateKey& tls_key,
              const core::Pkcs11EcdsaPrivateKey* service_key, const StationConfig& config) {
  const auto certs = core::load_certificates_pem(file);
  const auto& cert = certs.front();
  const bool is_ca = holds_key(cert, ca_key), is_tls = holds_key(cert, tls_key);
  const bool is_service = !is_ca && !is_tls && service_key != nullptr && holds_key(cert, *service_key);
  if (!is_ca && !is_tls && !is_service)
    refuse_cert(file, "it certifies key " + key_id(*cert.subject_public_key()) + ", neither " + key_label::device_ca +
                          " (" + key_id(ca_key) + ") nor " + key_label::station_tls + " (" + key_id(tls_key) +
                          ") of token '" + config.token_label + "'");
  try {
    core::verify_chain(cert, {}, {root});
  } catch (const core::Error&) {
    refuse_cert(file, "it does not verify under the given root (issuer " + cert.issuer_dn().to_string() + ")");
  }
  if (expired(cert)) refuse_cert(file, "it expired " + cert.not_after().readable_string());
  if (is_service) {
    if (inst.service_ca) refuse_cert(file, "a second certificate for the same key");
    check_service_ca_profile(file, cert, config);
    inst.service_ca = cert;
    return;
  }
  auto& slot = is_ca ? inst.device_ca : inst.station;
  if (slot) refuse_cert(file, "a second certificate for the same key");
  is_ca ? check_device_ca_profile(file, cert, config, ca_key.label()) : check_station_profile(file, cert, config);
  slot = cert;
}

Botan::X509_Certificate load_root(const std::string& file) {
  const auto certs = core::load_certificates_pem(file);
  const auto& root = certs.front();
  if (certs.size() != 1 || !root.is_self_signed() || !root.is_CA_cert() ||
      !signed_by(root, *root.subject_public_key()))
    refuse_cert(file, "the root must be one self-signed CA certificate");
  return root;
}

// With the service CA's certificate installed: the TLS trust file and the servers' keys and certificates,
// made as plain `keys init` makes them (kept while they are fine).
void install_servers(Init& in, const Botan::X509_Certificate& root, const core::Pkcs11EcdsaPrivateKey& service_key) {
  const auto service_ca = read_pem(in.path(pki_file::service_ca));
  if (service_ca.size() != 1 || !holds_key(service_ca[0], service_key)) return;
  ensure_text(in, pki_file::tls_trust, core::to_pem(service_ca[0]) + core::to_pem(root));
  ensure_server(in, pki_file::backupdb_cert, pki_file::backupdb_key, "keyline-backupdb", service_ca[0], service_key);
  ensure_server(in, pki_file::kps_cert, pki_file::kps_key, "keyline-kps", service_ca[0], service_key);
  ensure_server(in, pki_file::service_cert, pki_file::service_key, "keyline-service", service_ca[0], service_key);
}

// A certificate not given now stays only when it still chains to the root being installed.
void check_kept(Init& in, const char* file, const Botan::X509_Certificate& root) {
  const auto present = read_pem(in.path(file));
  if (present.empty()) return;
  try {
    core::verify_chain(present.front(), {}, {root});
  } catch (const core::Error&) {
    refuse_cert(in.path(file), "it stays installed but does not verify under the new root: give its new certificate too");
  }
}

// The certificate an install replaces stays as <name>-v<N>.pem when it was another version's: the
// devices it certified keep chaining through it (keys status lists it).
// Returns the replaced certificate and its key's label (nothing when none is replaced).
std::optional<std::pair<Botan::X509_Certificate, std::string>> archive_replaced(Init& in, const char* file,
                                                                                const char* base,
                                                                                const Botan::X509_Certificate& next) {
  const auto present = read_pem(in.path(file));
  if (present.empty() || holds_key(present[0], *next.subject_public_key())) return std::nullopt;
  const auto label = key_label_for(*in.token, base, present[0]);
  if (label.empty()) return std::nullopt;
  const std::string name = fs::path(file).stem().string() + "-v" + std::to_string(key_version_of(base, label)) + ".pem";
  std::string text;
  for (const auto& c : present) text += core::to_pem(c);
  write_file(join(in.config, name.c_str()), text, 0644);
  in.out << "keys: kept the replaced certificate as " << join(in.config, name.c_str()) << "\n";
  return std::make_pair(present[0], label);
}

}  // namespace

std::string pki_path(const StationConfig& config, const char* file) {
  const std::string path = join(config, file);
  if (!checked_pki_dir(config.pki_dir)) return path;  // nothing there yet: reading it fails on its own
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    check_pki_file(path, st);
  } else if (errno != ENOENT) {
    io_fail("cannot examine", path);
  }
  return path;
}

void keys_init(const StationConfig& config, const KeysInitOptions& options, std::ostream& out) {
  server_names(options);  // refuse bad --dns/--ip before anything is touched
  if (!core::is_valid_station_id(config.station_id))
    throw core::ConfigError(core::ErrorCode::Config, "station id is not 1-64 letters, digits, '-', '_', '.'");
  // Before the token is opened: a directory someone else can change gets nothing, not even a key.
  const PkiLock lock(make_pki_dir(config.pki_dir), out);
  const core::SecureBytes pin = read_pin(config);
  Init in{config, options, core::Pkcs11Token::open(config.hsm_module, config.token_label, pin, 4), out, {}, false};
  remove_stale_temps(in);

  const auto root_key = ensure_ec_key(in, key_label::root, 1);
  const auto device_ca_key = ensure_active_key(in, key_label::device_ca, 2, pki_file::device_ca);
  const auto service_ca_key = ensure_ec_key(in, key_label::service_ca, 3);
  const auto station_tls_key = ensure_active_key(in, key_label::station_tls, 4, pki_file::station_tls);
  ensure_secret_keys(in);
  ensure_oce_key(in);

  const auto root = ensure_root(in, *root_key);
  const auto device_ca =
      ensure_ca(in, pki_file::device_ca, root, *root_key, *device_ca_key, "Manufacturer Device CA");
  const auto service_ca =
      ensure_ca(in, pki_file::service_ca, root, *root_key, *service_ca_key, "Manufacturer Service CA");
  ensure_oce_cert(in, device_ca, *device_ca_key);
  ensure_text(in, pki_file::tls_trust, core::to_pem(service_ca) + core::to_pem(root));
  ensure_station_cert(in, service_ca, *service_ca_key, *station_tls_key);
  ensure_server(in, pki_file::backupdb_cert, pki_file::backupdb_key, "keyline-backupdb", service_ca, *service_ca_key);
  ensure_server(in, pki_file::kps_cert, pki_file::kps_key, "keyline-kps", service_ca, *service_ca_key);
  ensure_server(in, pki_file::service_cert, pki_file::service_key, "keyline-service", service_ca, *service_ca_key);

  if (!in.changed)
    out << "keys: everything present on token '" << config.token_label << "' and in " << config.pki_dir
        << ": nothing changed\n";
  out << "keys: root certificate    " << in.path(pki_file::root) << " SHA-256 " << fingerprint(root) << "\n"
      << "keys: Device CA           " << in.path(pki_file::device_ca) << " SHA-256 " << fingerprint(device_ca) << "\n"
      << "keys: service CA          " << in.path(pki_file::service_ca) << "\n"
      << "keys: station TLS client  " << in.path(pki_file::station_tls) << " (key on the token)\n"
      << "keys: public DB server    " << in.path(pki_file::backupdb_cert) << "\n"
      << "keys: KPS server          " << in.path(pki_file::kps_cert) << "\n"
      << "keys: service server      " << in.path(pki_file::service_cert) << "\n"
      << "keys: SCP11a OCE          " << in.path(pki_file::oce) << " (key " << key_label::oce << " on the token)\n";
}

void keys_csr(const StationConfig& config, const KeysInitOptions& options, std::ostream& out) {
  if (!core::is_valid_station_id(config.station_id))
    throw core::ConfigError(core::ErrorCode::Config, "station id is not 1-64 letters, digits, '-', '_', '.'");
  const PkiLock lock(make_pki_dir(config.pki_dir), out);
  const core::SecureBytes pin = read_pin(config);
  Init in{config, options, core::Pkcs11Token::open(config.hsm_module, config.token_label, pin, 4), out, {}, false};
  refuse_local_root(*in.token, config);
  remove_stale_temps(in);
  const auto device_ca_key = ensure_ec_key(in, key_label::device_ca, 2);
  const auto station_tls_key = ensure_ec_key(in, key_label::station_tls, 4);
  // Under the offline root too: the ceremony certifies it (profile service-ca), it certifies the servers here.
  const auto service_ca_key = ensure_ec_key(in, key_label::service_ca, 3);
  ensure_secret_keys(in);
  // Its certificate comes from the Device CA once the ceremony's certificate is installed.
  ensure_oce_key(in);
  Botan::X509_DN ca_dn, station_dn, service_dn;
  ca_dn.add_attribute("X520.CommonName", device_ca_cn(config));
  ca_dn.add_attribute("X520.Organization", options.organization);
  service_dn.add_attribute("X520.CommonName", service_ca_cn(config));
  service_dn.add_attribute("X520.Organization", options.organization);
  station_dn.add_attribute("X520.CommonName", config.station_id);
  station_dn.add_attribute("X520.OrganizationalUnit", core::kStationUnit);
  ensure_csr(in, csr_file::device_ca, *device_ca_key, ca_dn);
  ensure_csr(in, csr_file::station, *station_tls_key, station_dn);
  ensure_csr(in, csr_file::service_ca, *service_ca_key, service_dn);
  if (!in.changed) out << "keys: everything present on token '" << config.token_label << "': nothing changed\n";
  out << "keys: Device CA CSR    " << in.path(csr_file::device_ca) << " (keyline-ceremony sign --profile device-ca)\n"
      << "keys: station CSR      " << in.path(csr_file::station) << " (keyline-ceremony sign --profile station)\n"
      << "keys: service CA CSR   " << in.path(csr_file::service_ca) << " (keyline-ceremony sign --profile service-ca)\n"
      << "keys: then             keyline-station keys install-cert --root ROOT.pem --cert ...\n";
}

void keys_install_cert(const StationConfig& config, const std::string& root_pem,
                       const std::vector<std::string>& cert_files, std::ostream& out) {
  if (cert_files.empty()) throw core::ConfigError(core::ErrorCode::Usage, "give at least one --cert");
  const auto root = load_root(root_pem);
  const PkiLock lock(make_pki_dir(config.pki_dir), out);
  const core::SecureBytes pin = read_pin(config);
  Init in{config, {}, core::Pkcs11Token::open(config.hsm_module, config.token_label, pin, 2), out, {}, false};
  refuse_local_root(*in.token, config);
  for (const char* label : {key_label::device_ca, key_label::station_tls})
    if (!in.token->has_private_key(label))
      throw core::Error(errc::KeysMissing, "token '" + config.token_label + "' holds no " + label +
                                               ": run `keyline-station keys init --offline-root` first");
  // A roll's certificate is for the newest version (docs/custody.md, "Roll").
  const core::Pkcs11EcdsaPrivateKey ca_key(in.token, newest_key_label(*in.token, key_label::device_ca)),
      tls_key(in.token, newest_key_label(*in.token, key_label::station_tls));
  // A station initialized before the service CA was part of --offline-root has no such key.
  std::optional<core::Pkcs11EcdsaPrivateKey> service_key;
  if (in.token->has_private_key(key_label::service_ca)) service_key.emplace(in.token, key_label::service_ca);
  Installing inst;
  for (const auto& file : cert_files) classify(inst, file, root, ca_key, tls_key, service_key ? &*service_key : nullptr, config);
  if (!inst.device_ca) check_kept(in, pki_file::device_ca, root);
  if (!inst.station) check_kept(in, pki_file::station_tls, root);
  if (!inst.service_ca) check_kept(in, pki_file::service_ca, root);
  // Everything checked before anything is written; a crash between the files is finished by running
  // the same install-cert again.
  remove_stale_temps(in);
  if (inst.device_ca) archive_replaced(in, pki_file::device_ca, key_label::device_ca, *inst.device_ca);
  const auto retired =
      inst.station ? archive_replaced(in, pki_file::station_tls, key_label::station_tls, *inst.station) : std::nullopt;
  if (inst.device_ca) write_file(in.path(pki_file::device_ca), core::to_pem(*inst.device_ca), 0644);
  if (inst.station) write_file(in.path(pki_file::station_tls), core::to_pem(*inst.station), 0644);
  if (inst.service_ca) write_file(in.path(pki_file::service_ca), core::to_pem(*inst.service_ca), 0644);
  write_file(in.path(pki_file::root), core::to_pem(root), 0644);
  if (inst.device_ca)
    out << "keys: installed " << in.path(pki_file::device_ca) << " SHA-256 " << fingerprint(*inst.device_ca) << "\n";
  if (inst.station) out << "keys: installed " << in.path(pki_file::station_tls) << "\n";
  // Under the offline root install-cert, not the roll, replaces the station certificate: its entry for
  // the public DB's deny list is written here (the roll only named it).
  if (retired)
    pki_detail::retire_station_cert(config, retired->first, retired->second,
                                    key_label_for(*in.token, key_label::station_tls, *inst.station), out);
  if (inst.service_ca) out << "keys: installed " << in.path(pki_file::service_ca) << "\n";
  // The OCE certificate is the station's own Device CA's to issue, not the ceremony's.
  const auto device_ca = inst.device_ca ? std::vector<Botan::X509_Certificate>{*inst.device_ca}
                                        : read_pem(in.path(pki_file::device_ca));
  const auto ca_label = device_ca.size() == 1 ? key_label_for(*in.token, key_label::device_ca, device_ca[0]) : "";
  if (!ca_label.empty() && in.token->has_private_key(key_label::oce))
    ensure_oce_cert(in, device_ca[0], core::Pkcs11EcdsaPrivateKey(in.token, ca_label));
  if (service_key) install_servers(in, root, *service_key);
  out << "keys: installed " << in.path(pki_file::root) << " (trust anchor) SHA-256 " << fingerprint(root) << "\n";
}

namespace {

// The OCE chain only when oce.pem is for the token's OCE key under this Device CA: a mismatch is
// the same as none (scp11a then says to run `keys init`).
void load_oce_chain(const StationConfig& config, StationKeys& keys) {
  const auto pem = read_pki_file(join(config, pki_file::oce));
  if (!pem || !keys.token->has_public_key(key_label::oce)) return;
  const auto certs = core::parse_certificates_pem(text_of(*pem));
  const auto oce_key = keys.token->ec_public_key(key_label::oce);
  if (certs.size() != 1 || !is_oce_certificate_for(certs[0], keys.device_ca_cert, *oce_key)) return;
  keys.oce_chain = {keys.device_ca_cert.BER_encode(), certs[0].BER_encode()};
}

}  // namespace

StationKeys StationKeys::open(const StationConfig& config, std::size_t max_sessions) {
  checked_pki_dir(config.pki_dir);  // a missing directory is the KeysMissing below
  const core::SecureBytes pin = read_pin(config);
  auto token = core::Pkcs11Token::open(config.hsm_module, config.token_label, pin, max_sessions);
  if (!token->has_private_key(key_label::device_ca))
    throw core::Error(errc::KeysMissing, "token '" + config.token_label +
                                             "' holds no Device CA key: run `keyline-station keys init` first");
  const std::string ca_path = join(config, pki_file::device_ca);
  const auto ca_pem = read_pki_file(ca_path), root_pem = read_pki_file(join(config, pki_file::root));
  if (!ca_pem || !root_pem)
    throw core::Error(errc::KeysMissing, "no certificates in " + config.pki_dir + ": run `keyline-station keys init` first");
  auto ca_cert = core::parse_certificates_pem(text_of(*ca_pem)).at(0);
  // The installed certificate decides which version signs (docs/custody.md, "Roll"): a rolled key
  // waiting for its certificate is not used yet.
  const auto ca_label = key_label_for(*token, key_label::device_ca, ca_cert);
  if (ca_label.empty())
    throw core::Error(errc::KeysMissing, ca_path + " does not match any Device CA key on token '" + config.token_label + "'");
  auto ca_key = std::make_unique<core::Pkcs11EcdsaPrivateKey>(token, ca_label);
  auto root_cert = core::parse_certificates_pem(text_of(*root_pem)).at(0);
  // The certificate on disk must belong to the key on the token: a mismatched PKI dir would issue
  // certificates that no device accepts.
  if (ca_cert.subject_public_key_info() != ca_key->subject_public_key())
    throw core::Error(errc::KeysMissing, ca_path + " does not match the Device CA key on token '" + config.token_label + "'");
  StationKeys keys{std::move(token), std::move(ca_key), std::move(ca_cert), std::move(root_cert), {}};
  const auto tls = read_pem(join(config, pki_file::station_tls));
  const auto tls_label = tls.empty() ? "" : key_label_for(*keys.token, key_label::station_tls, tls[0]);
  if (!tls_label.empty()) keys.station_tls_label = tls_label;
  keys.master_version = std::max(1, newest_master_version(*keys.token));
  load_oce_chain(config, keys);
  return keys;
}

namespace pki_detail {

void locked(const StationConfig& config, std::ostream& out, const std::function<void()>& step) {
  const PkiLock lock(make_pki_dir(config.pki_dir), out);
  step();
}

void write_public(const StationConfig& config, const std::string& file, const std::string& text) {
  write_file(join(config, file.c_str()), text, 0644);
}

std::vector<Botan::X509_Certificate> read_certs(const StationConfig& config, const std::string& file) {
  return read_pem(join(config, file.c_str()));
}

void renew_oce_cert(const StationConfig& config, const std::shared_ptr<core::Pkcs11Token>& token,
                    const Botan::X509_Certificate& device_ca, const core::Pkcs11EcdsaPrivateKey& ca_key,
                    std::ostream& out) {
  if (!token->has_private_key(key_label::oce)) return;
  static const KeysInitOptions none;
  Init in{config, none, token, out, {}, false};
  ensure_oce_cert(in, device_ca, ca_key);
}

}  // namespace pki_detail

}  // namespace keyline::station
