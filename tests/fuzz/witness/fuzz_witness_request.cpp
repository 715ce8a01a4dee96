// POST /add-checkpoint bodies as anyone may send them to a witness (backupdb::Witness): every answer
// is one of the spec's statuses; a 200 is a cosignature that verifies over the submitted checkpoint,
// and the witness's head is then that checkpoint. The log key is fixed (seed 32 x 0x07, origin
// "keyline.test/log"), so the corpus can hold validly signed checkpoints: its seeds were made for this repository (leaves
// SHA-256(0x00 || "e<i>"), no outside source).
#include <cstdint>
#include <cstdlib>
#include <string>

#include <unistd.h>

#include "keyline/backupdb/witness.h"
#include "keyline/core/checkpoint.h"
#include "keyline/core/error.h"
#include "keyline/core/tlog_cosignature.h"

namespace {

using namespace keyline;

backupdb::Witness& witness() {
  static backupdb::Witness* w = [] {
    char tmpl[] = "/tmp/keyline-fuzz-witness-XXXXXX";
    if (!::mkdtemp(tmpl)) std::abort();
    const core::note::Ed25519Signer log("keyline.test/log", core::SecureBytes(32, 7));
    return new backupdb::Witness({core::note::Ed25519Verifier("keyline.test/log", log.public_key())},
                                 core::tlog::Cosigner("witness.test/fuzz", core::SecureBytes(32, 1)), std::string(tmpl) + "/s");
  }();
  return *w;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  auto& w = witness();
  const auto a = w.add_checkpoint(body, 1700000000);
  switch (a.status) {
    case 400: case 403: case 404: case 409: case 422: return 0;
    case 200: break;
    default: std::abort();
  }
  // A 200: the body held "old ...", proof lines, an empty line, then the note.
  const auto blank = body.find("\n\n");
  if (blank == std::string::npos) std::abort();
  const std::string note = body.substr(blank + 2);
  try {
    const auto cosigners = core::tlog::verified_cosigners(note + a.body, {w.key().key()});
    if (cosigners.size() != 1) std::abort();
    const auto cp = core::tlog::parse_checkpoint(core::note::parse_note(note).text);
    const auto head = w.head(cp.origin);
    if (!head || head->size != cp.size || head->root != cp.root) std::abort();
  } catch (const core::Error&) {
    std::abort();
  }
  return 0;
}
