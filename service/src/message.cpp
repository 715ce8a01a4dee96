// `keyline-service message` (docs/service.md "Messages from a third party"): what server 180 of the
// device keys seed does to reach a device. The device's transport key comes from the public DB, never
// from the caller: the record is validated to the root (chain, chip ID, IMEI, and its transport
// certificate: core::validate_record), so a rewriting proxy or public DB cannot make a message open on
// another device or a key of its own.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <ostream>

#include <sys/stat.h>
#include <unistd.h>

#include "keyline/core/cert_profile.h"
#include "keyline/core/error.h"
#include "keyline/core/hpke.h"
#include "keyline/core/http.h"
#include "keyline/core/record.h"
#include "keyline/service/errors.h"
#include "keyline/service/service.h"

namespace keyline::service {

namespace {

using core::Bytes;

// service-agent open reads at most 1 MiB of enc || ciphertext (device-emu/src/service_agent.cpp).
constexpr std::size_t kMaxSealed = 1u << 20;
constexpr std::size_t kMaxMessage = kMaxSealed - core::hpke::kEncSize - core::hpke::kTagSize;

core::SecureBytes read_message(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw core::IoError(core::ErrorCode::Io, "cannot read --in " + path);
  core::SecureBytes data;
  char buf[16384];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    data.insert(data.end(), buf, buf + in.gcount());
    if (data.size() > kMaxMessage)
      throw core::Error(errc::MessageTooLarge, "--in is over " + std::to_string(kMaxMessage) +
                                                   " bytes: the device opens at most 1 MiB sealed");
  }
  if (in.bad()) throw core::IoError(core::ErrorCode::Io, "cannot read --in " + path);
  return data;
}

std::vector<Botan::X509_Certificate> roots_of(const std::vector<std::string>& files) {
  std::vector<Botan::X509_Certificate> roots;
  for (const auto& f : files) {
    const auto certs = core::load_certificates_pem(f);
    roots.insert(roots.end(), certs.begin(), certs.end());
  }
  if (roots.empty()) throw core::ConfigError(core::ErrorCode::Usage, "message needs --trust");
  return roots;
}

// GET /v1/imei/{imei}: the record JSON. 404 is an unknown IMEI; another status, a server that
// cannot serve (the connection failing is core's Network error: exit 4 either way).
std::string fetch_record(const MessageRequest& request, const core::Imei& imei) {
  core::http::ClientOptions o;
  o.base_url = request.backupdb;
  o.ca_file = request.backupdb_ca;
  o.connect_attempts = 2;
  o.max_body = 4 * 1024 * 1024;  // core/record.h: a record is never larger
  const auto r = core::http::Client(o).get("/v1/imei/" + imei.str(), {{"Accept", "application/json"}});
  if (r.status == 404)
    throw core::Error(errc::UnknownImei, "the public DB has no record of IMEI " + imei.str());
  if (r.status != 200) throw core::Error(errc::PublicDb, "the public DB answered " + std::to_string(r.status));
  return r.body;
}

// The record of `imei` as served, verified to the roots; its transport key (X25519, 32 bytes).
Bytes verified_transport_key(const std::string& json, const core::Imei& imei,
                             const std::vector<Botan::X509_Certificate>& roots, core::Record& record) {
  try {
    record = core::Record::from_json(json);
    if (record.imei != imei)
      throw core::Error(errc::RecordInvalid, "the public DB answered the record of IMEI " + record.imei.str());
    core::validate_record(record, roots);
    const auto transport = core::transport_certificate(record);
    if (!transport)
      throw core::Error(errc::RecordInvalid,
                        "the record carries no transport certificate (published before it was added)");
    return transport->subject_public_key_bitstring();
  } catch (const core::Error& e) {
    if (e.code() == errc::RecordInvalid) throw;
    throw core::Error(errc::RecordInvalid, std::string("the device's record does not verify: ") + e.what());
  }
}

// Written whole or not at all: a temporary file next to `path`, then rename(2). mkstemp(3) creates it
// with O_CREAT|O_EXCL, so a name planted there (a symlink to another file) is never followed, and its
// random name cannot be guessed ahead; fchmod acts on the open file, not on a path.
class TempFile {
 public:
  explicit TempFile(const std::string& path) {
    const std::filesystem::path p(path);
    const auto dir = p.parent_path().empty() ? std::filesystem::path(".") : p.parent_path();
    m_name = (dir / ("." + p.filename().string() + ".XXXXXX")).string();
    m_fd = ::mkstemp(m_name.data());
    if (m_fd < 0) throw core::IoError(core::ErrorCode::Io, "cannot create a temporary file next to --out " + path);
  }
  ~TempFile() {
    if (m_fd >= 0) ::close(m_fd);
    if (!m_kept) ::unlink(m_name.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  // Every byte written, mode set, on disk (fsync) and closed without error, or false.
  bool write_all(const Bytes& data, mode_t mode) {
    for (std::size_t done = 0; done < data.size();) {
      const ssize_t n = ::write(m_fd, data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<std::size_t>(n);
    }
    const bool ok = ::fchmod(m_fd, mode) == 0 && ::fsync(m_fd) == 0;
    const int fd = m_fd;
    m_fd = -1;
    return ::close(fd) == 0 && ok;  // close(2) reports a delayed write error (NFS, quotas)
  }
  bool rename_to(const std::string& path) {
    m_kept = std::rename(m_name.c_str(), path.c_str()) == 0;
    return m_kept;
  }

 private:
  std::string m_name;
  int m_fd = -1;
  bool m_kept = false;
};

void write_sealed(const std::string& path, const Bytes& sealed) {
  TempFile tmp(path);
  // 0644: sealed, only the device opens it.
  if (!tmp.write_all(sealed, 0644) || !tmp.rename_to(path))
    throw core::IoError(core::ErrorCode::Io, "cannot write --out " + path + ": " + std::strerror(errno));
}

}  // namespace

void message_seal(const MessageRequest& request, std::ostream& out) {
  const core::Imei imei = core::Imei::parse(request.imei);
  const auto roots = roots_of(request.trust);
  const core::SecureBytes plain = read_message(request.in);
  core::Record record;
  const Bytes key = verified_transport_key(fetch_record(request, imei), imei, roots, record);
  const std::string info = kMessageInfo, aad = imei.str();
  const Bytes sealed = core::hpke::seal(key, Bytes(info.begin(), info.end()), Bytes(aad.begin(), aad.end()), plain);
  write_sealed(request.out, sealed);
  out << "sealed " << plain.size() << " bytes for IMEI " << imei.str() << " (chip " << record.chip_id.str()
      << ", record " << record.hash() << ") into " << request.out << " (" << sealed.size() << " bytes)\n";
}

}  // namespace keyline::service
