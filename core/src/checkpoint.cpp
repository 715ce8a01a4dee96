#include "keyline/core/checkpoint.h"

#include <limits>

#include "keyline/core/error.h"

namespace keyline::core::tlog {

namespace {

[[noreturn]] void malformed(const std::string& why) { throw FormatError(ErrorCode::BadCheckpoint, why); }

std::uint64_t parse_size(std::string_view s) {
  if (s.empty() || s.size() > 20) malformed("tree size is not 1 to 20 decimal digits");
  if (s.size() > 1 && s[0] == '0') malformed("tree size has a leading zero");
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') malformed("tree size is not decimal digits");
    const auto d = static_cast<std::uint64_t>(c - '0');
    if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10) malformed("tree size above 2^64 - 1");
    v = v * 10 + d;
  }
  return v;
}

void check_line(std::string_view line, std::size_t max, const char* what) {
  if (line.empty()) malformed(std::string(what) + " is empty");
  if (line.size() > max) malformed(std::string(what) + " is longer than " + std::to_string(max) + " bytes");
  if (line.find('\n') != std::string_view::npos || !note::valid_note_chars(line))
    malformed(std::string(what) + " is not one line of UTF-8 without control characters");
}

}  // namespace

std::string checkpoint_text(const Checkpoint& c) {
  check_line(c.origin, max_origin_bytes, "origin");
  if (c.extensions.size() > max_extension_lines) malformed("too many extension lines");
  std::string out = c.origin + "\n" + std::to_string(c.size) + "\n" + to_base64(c.root.data(), c.root.size()) + "\n";
  for (const auto& e : c.extensions) {
    check_line(e, max_extension_bytes, "extension line");
    out += e + "\n";
  }
  return out;
}

Checkpoint parse_checkpoint(std::string_view text) {
  if (text.empty() || text.back() != '\n') malformed("checkpoint text does not end in a newline");
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    const auto nl = text.find('\n');
    if (lines.size() == 3 + max_extension_lines) malformed("too many extension lines");
    lines.push_back(text.substr(0, nl));
    text.remove_prefix(nl + 1);
  }
  if (lines.size() < 3) malformed("checkpoint text has fewer than three lines");
  Checkpoint c;
  check_line(lines[0], max_origin_bytes, "origin");
  c.origin = std::string(lines[0]);
  c.size = parse_size(lines[1]);
  Bytes root;
  try {
    root = from_base64(lines[2]);
  } catch (const FormatError&) {
    malformed("root hash is not standard base64");
  }
  const auto h = merkle::to_hash(root);
  if (!h) malformed("root hash is not 32 bytes");
  c.root = *h;
  for (std::size_t i = 3; i < lines.size(); ++i) {
    check_line(lines[i], max_extension_bytes, "extension line");
    c.extensions.emplace_back(lines[i]);
  }
  return c;
}

std::string sign_checkpoint(const Checkpoint& c, const std::vector<const note::NoteSigner*>& signers) {
  return note::sign_note(checkpoint_text(c), signers);
}

OpenedCheckpoint open_checkpoint(std::string_view signed_note, const note::NoteVerifier& log_key,
                                 std::string_view origin) {
  if (log_key.name() != origin) malformed("the log key's name is not the log's origin");
  OpenedCheckpoint out;
  out.note = note::open_note(signed_note, {&log_key});
  out.checkpoint = parse_checkpoint(out.note.text);
  if (out.checkpoint.origin != origin) malformed("checkpoint of another log (origin " + out.checkpoint.origin + ")");
  return out;
}

}  // namespace keyline::core::tlog
