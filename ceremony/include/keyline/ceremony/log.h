// The ceremony log (docs/ceremony.md, "The log"): JSON lines, each carrying its sequence number, the UTC
// time, the SHA-256 of the previous line (the first: of a genesis string naming the root key), the root
// key's id, the operation and its phase (intent before, outcome after), the operation's fields, and an
// ECDSA P-256 signature by the root key over the line's canonical bytes without its "sig" member.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <botan/pk_keys.h>
#include <botan/rng.h>
#include <botan/x509cert.h>

namespace keyline::ceremony {

using Fields = std::vector<std::pair<std::string, std::string>>;

struct LogEntry {
  std::uint64_t seq = 0;
  std::string time;   // RFC 3339 UTC, seconds: 2026-12-01T12:00:00Z
  std::string prev;   // hex SHA-256 of the previous line's bytes (without its newline)
  std::string key;    // hex SHA-256 of the signer's SubjectPublicKeyInfo
  std::string op;     // init-root | sign
  std::string phase;  // intent | outcome
  Fields fields;      // the operation's inputs (intent) or result (outcome), in order
  std::string sig;    // hex r||s (64 bytes), over canonical_body()
};

// The key id the log names: hex SHA-256 of the SubjectPublicKeyInfo DER.
std::string key_id(const Botan::Public_Key& key);
// The first line's "prev": hex SHA-256 of "keyline ceremony log v1 genesis: root key <key id>".
std::string genesis_hash(const std::string& root_key_id);

// The canonical JSON text of the entry without "sig" (members in the order of LogEntry, then fields).
std::string canonical_body(const LogEntry& e);
// The whole line (canonical_body with ,"sig":"..." before the closing brace), no newline.
std::string to_line(const LogEntry& e);
// Parses one line; nullopt when it is not exactly a line to_line could have written.
std::optional<LogEntry> parse_line(const std::string& line);

struct Finding {
  std::size_t line = 0;  // 1-based line number in the file
  std::string reason;
};
struct VerifyResult {
  std::vector<Finding> findings;      // empty: every line verifies and chains
  std::vector<std::string> warnings;  // an intent without an outcome (an interrupted operation)
  std::size_t lines = 0;
  std::uint64_t last_seq = 0;
  std::string last_hash;  // hex SHA-256 of the last line (the genesis hash for an empty log)
};

// Checks every line of `text` against `root_key`: form, signer, signature, sequence, chain.
VerifyResult verify_log_text(const std::string& text, const Botan::Public_Key& root_key);

// An append-only log file. Every append re-reads and verifies the whole file first, so a tampered log
// is refused before anything is added to it, and is made durable (fsync) before append returns.
class CeremonyLog {
 public:
  CeremonyLog(std::string path, const Botan::Public_Key& root_pub, const Botan::Private_Key& root_key,
              Botan::RandomNumberGenerator& rng);
  // Appends one signed line; returns it. Throws core::Error(errc::LogInvalid / errc::LogWrite).
  LogEntry append(const std::string& op, const std::string& phase, const Fields& fields);
  const std::string& path() const noexcept { return m_path; }

 private:
  std::string m_path;
  const Botan::Public_Key& m_root_pub;
  const Botan::Private_Key& m_root_key;
  Botan::RandomNumberGenerator& m_rng;
};

// The whole file; empty when it does not exist. Throws IoError when it exists but cannot be read.
std::string read_log_file(const std::string& path);
// Human-readable rendering, one block per line.
std::string show_log_text(const std::string& text);

}  // namespace keyline::ceremony
