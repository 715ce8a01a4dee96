// Signed notes as a hostile log, mirror or proxy hands them over (core::note, C2SP signed-note).
// What parses must print back byte for byte (one encoding per note: strict base64, the last blank
// line), and what opens must carry a verified signature by the one known key.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "keyline/core/error.h"
#include "keyline/core/signed_note.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  static const auto known = note::Ed25519Verifier::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW");
  const std::string msg(reinterpret_cast<const char*>(data), size);
  note::Note parsed;
  try {
    parsed = note::parse_note(msg);
  } catch (const FormatError&) {
    return 0;
  }
  std::string again = parsed.text + "\n";
  for (const auto& s : parsed.signatures) again += s.line() + "\n";
  if (again != msg || parsed.signatures.empty() || parsed.signatures.size() > note::max_signatures) std::abort();
  try {
    const auto opened = note::open_note(msg, {&known});
    if (opened.verified.size() != 1 || opened.text != parsed.text) std::abort();
    if (!known.verify(opened.text, opened.verified[0].signature)) std::abort();
  } catch (const Error& e) {
    if (e.code() != ErrorCode::BadNote && e.code() != ErrorCode::NoteNotVerified) std::abort();
  }
  return 0;
}
