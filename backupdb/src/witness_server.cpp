// `keyline-backupdb witness | witness init | witness key | witness-push` (docs/transparency.md, "Witness").
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "keyline/backupdb/witness.h"
#include "keyline/core/error.h"
#include "keyline/core/http.h"
#include "keyline/core/http_service.h"
#include "keyline/core/secret_input.h"

namespace keyline::backupdb {

namespace {

namespace http = core::http;
namespace tlog = core::tlog;

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  const auto e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::string read_text(const std::string& path, const char* what) {
  std::ifstream f(path);
  std::ostringstream s;
  if (!f || !(s << f.rdbuf())) throw core::ConfigError(core::ErrorCode::Config, std::string("cannot read ") + what + " " + path);
  return s.str();
}

core::note::Ed25519Verifier parse_log_key(const std::string& text) {
  try {
    return core::note::Ed25519Verifier::parse(trim(text));
  } catch (const core::Error& e) {
    throw core::ConfigError(core::ErrorCode::Config, std::string("a log key is not an Ed25519 verifier key: ") + e.what());
  }
}

std::vector<core::note::Ed25519Verifier> log_keys(const std::vector<std::string>& keys, const std::vector<std::string>& files) {
  std::vector<core::note::Ed25519Verifier> out;
  for (const auto& k : keys) out.push_back(parse_log_key(k));
  for (const auto& f : files) out.push_back(parse_log_key(read_text(f, "the log key file")));
  if (out.empty()) throw core::ConfigError(core::ErrorCode::Usage, "give the log(s) to witness: --log-key VKEY or --log-key-file F");
  return out;
}

std::uint64_t now_seconds() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

http::Reply handle(Witness& w, const http::Request& q) {
  if (q.path != "/add-checkpoint") return http::reply(404, "text/plain; charset=utf-8", "not found\n");
  if (q.method != "POST") return http::reply(405, "text/plain; charset=utf-8", "POST only\n", {{"Allow", "POST"}});
  const auto a = w.add_checkpoint(q.body, now_seconds());
  http::Reply r = http::reply(a.status, a.content_type, a.body);
  if (a.status != 200) r.log_detail = trim(a.body);
  return r;
}

}  // namespace

tlog::Cosigner read_witness_key(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw core::ConfigError(core::ErrorCode::Config, "cannot read the witness key file " + path);
  if ((st.st_mode & 077) != 0)
    throw core::ConfigError(core::ErrorCode::Config, "the witness key file " + path + " may be read by group or others: chmod 600 it");
  try {
    return tlog::Cosigner::parse(core::read_secret_file(path));
  } catch (const core::FormatError& e) {
    throw core::ConfigError(core::ErrorCode::Config, "the witness key file " + path + " holds no witness key: " + e.what());
  }
}

std::string witness_init(const WitnessConfig& cfg) {
  if (cfg.key_file.empty() || cfg.name.empty())
    throw core::ConfigError(core::ErrorCode::Usage, "witness init needs --witness-key-file and --name");
  const auto key = tlog::Cosigner::generate(cfg.name);
  const auto text = key.text();
  // O_EXCL: an existing key is never overwritten (its cosignatures are pinned by clients).
  const int fd = ::open(cfg.key_file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw core::ConfigError(core::ErrorCode::Config, "cannot create " + cfg.key_file + " (it must not exist yet)");
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) throw core::IoError(core::ErrorCode::Io, "cannot write " + cfg.key_file);
  return key.key().text();
}

std::string witness_key(const WitnessConfig& cfg) { return read_witness_key(cfg.key_file).key().text(); }

int witness_serve(const WitnessConfig& cfg) {
  if (cfg.state_dir.empty()) throw core::ConfigError(core::ErrorCode::Usage, "give --state DIR");
  Witness w(log_keys(cfg.log_keys, cfg.log_key_files), read_witness_key(cfg.key_file), cfg.state_dir);
  const http::ListenerSettings settings;
  http::Server api(http::public_listener("keyline-witness", cfg.listen, settings, 64 * 1024, {}, {cfg.tls_cert, cfg.tls_key, {}}),
                   [&w](const http::Request& q) { return handle(w, q); }, {},
                   [](const http::Request& q, const http::Reply& r, std::chrono::microseconds t) {
                     std::fprintf(stderr, "%s\n", http::access_line(q, r, t).c_str());
                   });
  http::Server ops(http::operations_listener("keyline-witness-ops", "127.0.0.1:0"), [](const http::Request&) {
    return http::reply(200, "text/plain; charset=utf-8", "ok\n");
  });
  std::printf("keyline-backupdb: witness %s\n", w.key().key().text().c_str());
  return http::serve_until_stopped("keyline-backupdb witness", api, cfg.tls_cert.empty() ? "HTTP" : "HTTPS", ops);
}

}  // namespace keyline::backupdb
