// Offline checks of Merkle proof files (issue #18): `keyline-recovery log verify-inclusion` and
// `verify-consistency` read one proof in the transparency-dev test-data JSON form
// (tests/vectors/merkle/README.md) and run it through core::merkle's verifiers (RFC 9162 sections
// 2.1.3.2 and 2.1.4.2). The files come from anywhere, so the parser is strict. docs/recovery.md section 6.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "keyline/core/bytes.h"

namespace keyline::recovery::log_verify {

// Larger files are refused unread: a proof of a 2^64-leaf tree is under 8 KiB of JSON.
constexpr std::size_t max_file_size = 1 << 20;

// What both probe forms carry besides the proof itself. `desc` and `wantErr` are optional (a
// hand-written proof need not say what it expects); the verdict never depends on them.
struct ProbeNotes {
  std::string desc;
  std::optional<bool> want_err;
};

struct InclusionProbe {
  std::uint64_t leaf_index = 0;  // leafIdx, 0-based
  std::uint64_t tree_size = 0;   // treeSize
  core::Bytes root;
  core::Bytes leaf_hash;               // SHA-256(0x00 || leaf), any length as read
  std::vector<core::Bytes> proof;      // leaf to root; null and [] both give {}
  ProbeNotes notes;
};

struct ConsistencyProbe {
  std::uint64_t size1 = 0;
  std::uint64_t size2 = 0;
  core::Bytes root1;
  core::Bytes root2;
  std::vector<core::Bytes> proof;
  ProbeNotes notes;
};

// Strict: one JSON object, exactly the fields of its form (no unknown or repeated keys), integers
// 0..2^64-1 written as integers, hashes as RFC 4648 section 4 base64 strings. Throws
// FormatError(BadProof) naming the field.
InclusionProbe parse_inclusion(std::string_view json);
ConsistencyProbe parse_consistency(std::string_view json);

// The outcome of one check: what was checked (printable), and why it failed when it did.
struct Report {
  std::string checked;
  bool valid = false;
  std::string reason;  // empty when valid
};

Report check(const InclusionProbe& p);
Report check(const ConsistencyProbe& p);

// Reads and checks one file. Throws ConfigError(Usage) when it cannot be read (or is larger than
// max_file_size), FormatError(BadProof) when it does not parse.
Report check_inclusion_file(const std::string& path);
Report check_consistency_file(const std::string& path);

// The lines the command prints: what was checked, then "valid" or "INVALID: <reason>".
std::string format_report(const Report& r);

}  // namespace keyline::recovery::log_verify
