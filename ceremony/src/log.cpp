#include "keyline/ceremony/log.h"

#include <cerrno>
#include <cstdio>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <botan/hash.h>
#include <botan/hex.h>
#include <botan/pubkey.h>

#include "keyline/ceremony/errors.h"
#include "keyline/core/utf8.h"

namespace keyline::ceremony {

namespace {

std::string sha256_hex(const std::string& s) {
  auto h = Botan::HashFunction::create_or_throw("SHA-256");
  return Botan::hex_encode(h->process(s), false);
}

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::vector<std::string> split_lines(const std::string& text, bool& torn) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {
      torn = true;
      out.push_back(text.substr(pos));
      break;
    }
    out.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return out;
}

bool signature_ok(const LogEntry& e, const Botan::Public_Key& key) {
  try {
    const auto sig = Botan::hex_decode(e.sig);
    Botan::PK_Verifier v(key, "EMSA1(SHA-256)", Botan::IEEE_1363);
    const std::string body = canonical_body(e);
    return v.verify_message(reinterpret_cast<const std::uint8_t*>(body.data()), body.size(), sig.data(), sig.size());
  } catch (const Botan::Exception&) {
    return false;
  }
}

// Why the sequence number of line `n` is not `expected`: a line missing, or lines out of order. A
// sequence number that turns up later in the file is out of place; one that never does was dropped.
std::string sequence_reason(std::uint64_t seq, std::uint64_t expected, const std::set<std::uint64_t>& later) {
  if (seq > expected && !later.count(expected)) {
    const std::string gap = seq - expected == 1 ? std::to_string(expected)
                                                : std::to_string(expected) + ".." + std::to_string(seq - 1);
    return "sequence " + std::to_string(seq) + " follows " + std::to_string(expected - 1) + ": line(s) with sequence " +
           gap + " dropped";
  }
  if (seq < expected)
    return "sequence " + std::to_string(seq) + " where " + std::to_string(expected) +
           " was expected: a line repeated, or lines reordered";
  return "sequence " + std::to_string(seq) + " where " + std::to_string(expected) + " was expected: lines reordered";
}

// The first rule line `e` breaks, or an empty string.
std::string line_problem(const LogEntry& e, const Botan::Public_Key& root_key, const std::string& root_id,
                         std::uint64_t expected, const std::string& prev_hash, const std::set<std::uint64_t>& later) {
  if (e.key != root_id) return "signed by another key (key " + e.key + ", the root's is " + root_id + ")";
  if (!signature_ok(e, root_key)) return "signature does not verify: the line was changed after it was signed";
  if (e.seq != expected) return sequence_reason(e.seq, expected, later);
  if (e.prev != prev_hash)
    return expected == 1 ? "prev is not the genesis hash of this root: the log does not start here"
                         : "prev is not the SHA-256 of the line before: a line before it was changed or removed";
  return {};
}

}  // namespace

VerifyResult verify_log_text(const std::string& text, const Botan::Public_Key& root_key) {
  VerifyResult r;
  const std::string root_id = key_id(root_key);
  r.last_hash = genesis_hash(root_id);
  bool torn = false;
  const auto lines = split_lines(text, torn);
  std::vector<std::optional<LogEntry>> entries;
  std::multiset<std::uint64_t> remaining;
  for (const auto& l : lines) {
    entries.push_back(parse_line(l));
    if (entries.back()) remaining.insert(entries.back()->seq);
  }
  // Intent lines waiting for their outcome (whose "intent" field names the intent's sequence number).
  std::map<std::string, std::pair<std::size_t, std::string>> open;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::size_t n = i + 1;
    if (entries[i]) remaining.erase(remaining.find(entries[i]->seq));
    if (torn && i + 1 == lines.size()) {
      r.findings.push_back({n, "incomplete last line (no newline): a write was cut off"});
    } else if (!entries[i]) {
      r.findings.push_back({n, "not a canonical log line (changed, or not written by keyline-ceremony)"});
    } else {
      const std::set<std::uint64_t> later(remaining.begin(), remaining.end());
      const auto why = line_problem(*entries[i], root_key, root_id, r.last_seq + 1, r.last_hash, later);
      if (!why.empty()) r.findings.push_back({n, why});
      r.last_seq = entries[i]->seq;
      if (entries[i]->phase == "intent") open[std::to_string(entries[i]->seq)] = {n, entries[i]->op};
      for (const auto& [name, value] : entries[i]->fields)
        if (entries[i]->phase == "outcome" && name == "intent") open.erase(value);
    }
    r.last_hash = sha256_hex(lines[i]);
  }
  for (const auto& [seq, where] : open)
    r.warnings.push_back("line " + std::to_string(where.first) + ": " + where.second + " (sequence " + seq +
                         ") has no outcome line: the operation was interrupted");
  r.lines = lines.size();
  return r;
}

std::string read_log_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return {};
    throw core::IoError(core::ErrorCode::Io, "cannot read " + path + ": " + std::strerror(errno));
  }
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
  const int err = errno;
  ::close(fd);
  if (n < 0) throw core::IoError(core::ErrorCode::Io, "cannot read " + path + ": " + std::strerror(err));
  return out;
}

CeremonyLog::CeremonyLog(std::string path, const Botan::Public_Key& root_pub, const Botan::Private_Key& root_key,
                         Botan::RandomNumberGenerator& rng)
    : m_path(std::move(path)), m_root_pub(root_pub), m_root_key(root_key), m_rng(rng) {}

LogEntry CeremonyLog::append(const std::string& op, const std::string& phase, const Fields& fields) {
  const auto state = verify_log_text(read_log_file(m_path), m_root_pub);
  if (!state.findings.empty())
    throw core::Error(errc::LogInvalid, "the ceremony log does not verify (line " +
                                            std::to_string(state.findings.front().line) +
                                            ": " + state.findings.front().reason + "); nothing appended");
  LogEntry e;
  e.seq = state.last_seq + 1;
  e.time = utc_now();
  e.prev = state.last_hash;
  e.key = key_id(m_root_pub);
  e.op = op;
  e.phase = phase;
  e.fields = fields;
  Botan::PK_Signer signer(m_root_key, m_rng, "EMSA1(SHA-256)", Botan::IEEE_1363);
  const std::string body = canonical_body(e);
  e.sig = Botan::hex_encode(
      signer.sign_message(reinterpret_cast<const std::uint8_t*>(body.data()), body.size(), m_rng), false);
  const std::string line = to_line(e) + "\n";
  const int fd = ::open(m_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) throw core::Error(errc::LogWrite, "cannot open " + m_path + ": " + std::strerror(errno));
  const ssize_t w = ::write(fd, line.data(), line.size());
  const bool ok = w == static_cast<ssize_t>(line.size()) && ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) throw core::Error(errc::LogWrite, "cannot append to " + m_path + ": " + std::strerror(err));
  return e;
}

namespace {

// A field as the terminal may show it: every byte of a code point a terminal would act on (C0, DEL,
// C1, bidi controls: core::is_terminal_safe) and every byte of invalid UTF-8 as \xNN, so a value can
// never move the cursor or reorder what the officers read above it.
std::string shown(const std::string& v) {
  std::string out;
  std::size_t i = 0;
  while (i < v.size()) {
    const std::size_t start = i;
    std::uint32_t cp = 0;
    const bool ok = core::utf8_next(v, i, cp) && core::is_terminal_safe(cp);
    if (!ok && i == start) ++i;  // invalid: escape one byte, go on with the next
    if (ok) {
      out.append(v, start, i - start);
      continue;
    }
    for (std::size_t k = start; k < i; ++k) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(v[k]));
      out += buf;
    }
  }
  return out;
}

}  // namespace

std::string show_log_text(const std::string& text) {
  std::ostringstream out;
  bool torn = false;
  std::size_t n = 0;
  for (const auto& l : split_lines(text, torn)) {
    ++n;
    const auto e = parse_line(l);
    if (!e) {
      out << "line " << n << ": (not a log line)\n";
      continue;
    }
    out << "#" << e->seq << "  " << shown(e->time) << "  " << shown(e->op) << " " << shown(e->phase) << "\n";
    for (const auto& [name, value] : e->fields) out << "    " << shown(name) << ": " << shown(value) << "\n";
    out << "    prev: " << e->prev.substr(0, 16) << "...  key: " << e->key.substr(0, 16) << "...\n";
  }
  return out.str();
}

}  // namespace keyline::ceremony
