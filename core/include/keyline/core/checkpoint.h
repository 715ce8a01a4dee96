// C2SP tlog-checkpoint v1.0.0 (c2sp.org/tlog-checkpoint@v1.0.0): the signed tree head of the log,
// a signed note (core/signed_note.h) whose text is origin, tree size and root hash, then optional
// extension lines. docs/transparency.md.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "keyline/core/merkle.h"
#include "keyline/core/signed_note.h"

namespace keyline::core::tlog {

constexpr std::size_t max_origin_bytes = 256;
constexpr std::size_t max_extension_lines = 16;
constexpr std::size_t max_extension_bytes = 1024;

struct Checkpoint {
  std::string origin;
  std::uint64_t size = 0;
  merkle::Hash root{};
  std::vector<std::string> extensions;
  bool operator==(const Checkpoint& o) const {
    return origin == o.origin && size == o.size && root == o.root && extensions == o.extensions;
  }
};

// The note text ("Note text"): each line newline-terminated. Throws FormatError(BadCheckpoint)
// for an origin or extension line that could not be parsed back.
std::string checkpoint_text(const Checkpoint& c);
// Strict "Note text" parsing: at least three non-empty lines, each ending in a newline; a
// non-empty origin; the size in ASCII decimal without leading zeroes (0 alone for the empty
// tree), at most 2^64 - 1; the root as standard base64 of exactly 32 bytes; non-empty extension
// lines; the limits above. Throws FormatError(BadCheckpoint).
Checkpoint parse_checkpoint(std::string_view text);

// A checkpoint text signed by the log key (and any other signers, e.g. a second log key in a roll).
std::string sign_checkpoint(const Checkpoint& c, const std::vector<const note::NoteSigner*>& signers);

struct OpenedCheckpoint {
  Checkpoint checkpoint;
  note::VerifiedNote note;
};
// Opens a checkpoint signed by the log key: the note verifies under `log_key` (signatures by other
// keys are ignored, "Signatures"), its origin is `origin`, and the log key's name is the origin (the
// spec's SHOULD, a MUST here: one name per log). Throws FormatError(BadNote/BadCheckpoint) or
// CryptoError(NoteNotVerified).
OpenedCheckpoint open_checkpoint(std::string_view signed_note, const note::NoteVerifier& log_key,
                                 std::string_view origin);

}  // namespace keyline::core::tlog
