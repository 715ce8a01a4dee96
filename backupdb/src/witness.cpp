// The witness's decisions and state (C2SP tlog-witness "add-checkpoint"; docs/transparency.md, "Witness").
#include "keyline/backupdb/witness.h"

#include <botan/hash.h>

#include <cerrno>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "keyline/core/error.h"

namespace keyline::backupdb {

namespace {

namespace tlog = core::tlog;
namespace merkle = core::merkle;

struct AddRequest {
  std::uint64_t old_size = 0;
  std::vector<core::Bytes> proof;
  std::string note;
};

[[noreturn]] void bad(const std::string& why) { throw core::FormatError(core::ErrorCode::BadProof, why); }

// "The old size line": "old", one space, ASCII decimal without leading zeroes.
std::uint64_t parse_old_line(const std::string& line) {
  if (line.rfind("old ", 0) != 0) bad("the first line is not \"old <size>\"");
  const std::string d = line.substr(4);
  if (d.empty() || d.size() > 20 || d.find_first_not_of("0123456789") != std::string::npos || (d.size() > 1 && d[0] == '0'))
    bad("the old size is not a decimal without leading zeroes");
  errno = 0;
  const auto v = std::strtoull(d.c_str(), nullptr, 10);
  if (errno == ERANGE) bad("the old size is above 2^64 - 1");
  return v;
}

// The body: the old size line, at most 63 proof lines, an empty line, the checkpoint (every line
// newline-terminated, spec "add-checkpoint").
AddRequest parse_add_request(const std::string& body) {
  AddRequest r;
  std::size_t pos = 0;
  const auto next_line = [&]() {
    const auto nl = body.find('\n', pos);
    if (nl == std::string::npos) bad("a line does not end in a newline");
    std::string line = body.substr(pos, nl - pos);
    pos = nl + 1;
    return line;
  };
  r.old_size = parse_old_line(next_line());
  for (std::string line = next_line(); !line.empty(); line = next_line()) {
    if (r.proof.size() == 63) bad("more than 63 consistency proof lines");
    core::Bytes h;
    try {
      h = core::from_base64(line);
    } catch (const core::Error&) {
      bad("a consistency proof line is not base64");
    }
    if (h.size() != 32) bad("a consistency proof line is not a 32-byte hash");
    r.proof.push_back(std::move(h));
  }
  r.note = body.substr(pos);
  return r;
}

std::string origin_file(const std::string& dir, const std::string& origin) {
  const auto sha = Botan::HashFunction::create_or_throw("SHA-256");
  const auto d = sha->process(origin);
  return dir + "/" + core::to_hex(d.data(), 16) + ".checkpoint";
}

// Written whole or not at all, and surviving a crash once the call returns: temp file, fsync,
// rename, fsync of the directory (rename(2), fsync(2)).
void write_durably(const std::string& dir, const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0 && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  if (fd >= 0) ::close(fd);
  ok = ok && ::rename(tmp.c_str(), path.c_str()) == 0;
  const int dfd = ok ? ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
  ok = ok && dfd >= 0 && ::fsync(dfd) == 0;
  if (dfd >= 0) ::close(dfd);
  if (!ok) throw core::IoError(core::ErrorCode::Io, "cannot write the witness state " + path);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  if (!f || !(s << f.rdbuf())) throw core::IoError(core::ErrorCode::Io, "cannot read " + path);
  return s.str();
}

Witness::Answer text(int status, const std::string& body) { return {status, "text/plain; charset=utf-8", body + "\n"}; }

// "409 Conflict ... the tree size of the latest cosigned checkpoint", text/x.tlog.size.
Witness::Answer conflict(std::uint64_t known) { return {409, "text/x.tlog.size", std::to_string(known) + "\n"}; }

}  // namespace

Witness::Witness(std::vector<core::note::Ed25519Verifier> logs, tlog::Cosigner key, std::string state_dir)
    : m_key(std::move(key)), m_dir(std::move(state_dir)) {
  for (auto& l : logs) {
    const std::string name = l.name();
    if (!m_logs.emplace(name, std::move(l)).second)
      throw core::ConfigError(core::ErrorCode::Config, "two log keys for the origin " + name + ": give one per log");
  }
  if (::mkdir(m_dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw core::IoError(core::ErrorCode::Io, "cannot create the witness state directory " + m_dir);
  for (const auto& [origin, log] : m_logs) {
    const std::string path = origin_file(m_dir, origin);
    if (::access(path.c_str(), F_OK) != 0) continue;
    // The state was written by this witness after verifying it; opening it again under the log key
    // still refuses a file edited or swapped by hand rather than trusting it.
    try {
      const auto cp = tlog::open_checkpoint(read_file(path), log, origin).checkpoint;
      m_heads[origin] = {cp.size, cp.root};
    } catch (const core::Error& e) {
      throw core::ConfigError(core::ErrorCode::Config, "the witness state " + path + " for " + origin +
                                                           " is not a checkpoint of that log: " + e.what());
    }
  }
}

std::optional<WitnessedHead> Witness::head(const std::string& origin) const {
  std::lock_guard<std::mutex> lock(m_mutex);
  const auto it = m_heads.find(origin);
  if (it == m_heads.end()) return std::nullopt;
  return it->second;
}

Witness::Answer Witness::add_checkpoint(const std::string& body, std::uint64_t now) {
  try {
    return decide(body, now);
  } catch (const core::FormatError& e) {
    return text(400, std::string("bad request: ") + e.what());
  }
}

Witness::Answer Witness::decide(const std::string& body, std::uint64_t now) {
  const AddRequest req = parse_add_request(body);
  const tlog::Checkpoint claimed = tlog::parse_checkpoint(core::note::parse_note(req.note).text);
  const auto log = m_logs.find(claimed.origin);
  if (log == m_logs.end()) return text(404, "unknown log origin");
  tlog::Checkpoint cp;
  try {
    cp = tlog::open_checkpoint(req.note, log->second, claimed.origin).checkpoint;
  } catch (const core::CryptoError&) {
    return text(403, "the checkpoint carries no valid signature by the log's key");
  }
  if (req.old_size > cp.size) return text(400, "the old size is larger than the checkpoint's");
  if (req.old_size == 0 && !req.proof.empty()) return text(400, "a consistency proof from size 0 must be empty");

  std::lock_guard<std::mutex> lock(m_mutex);
  const auto it = m_heads.find(cp.origin);
  const WitnessedHead known = it == m_heads.end() ? WitnessedHead{} : it->second;
  if (req.old_size != known.size) return conflict(known.size);
  if (it != m_heads.end() && cp.size == known.size && cp.root != known.root) {
    keep_evidence(req.note, now);
    return conflict(known.size);
  }
  if (it != m_heads.end() && cp.size > known.size && known.size > 0) {
    try {
      merkle::verify_consistency(known.size, cp.size, req.proof, merkle::to_bytes(known.root), merkle::to_bytes(cp.root));
    } catch (const core::Error&) {
      keep_evidence(body, now);
      return text(422, "the consistency proof does not verify from the last cosigned checkpoint");
    }
  }
  const WitnessedHead next{cp.size, cp.root};
  persist(cp.origin, req.note, next);
  m_heads[cp.origin] = next;
  return {200, "text/plain; charset=utf-8", m_key.cosign(tlog::checkpoint_text(cp), now) + "\n"};
}

// The spec's MAY: a request signed by the log that the witness refuses as a fork is kept, since it
// may prove the log's misbehaviour (two signed checkpoints that cannot both be true).
void Witness::keep_evidence(const std::string& request, std::uint64_t now) {
  const std::string dir = m_dir + "/evidence";
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return;
  write_durably(dir, dir + "/" + std::to_string(now) + "-" + std::to_string(++m_evidence), request);
}

void Witness::persist(const std::string& origin, const std::string& note, const WitnessedHead&) {
  write_durably(m_dir, origin_file(m_dir, origin), note);
}

}  // namespace keyline::backupdb
