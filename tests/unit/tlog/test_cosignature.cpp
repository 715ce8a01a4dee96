// C2SP tlog-cosignature v1.0.0, Ed25519 (core/tlog_cosignature.h). Known answer: the layout of the
// spec's own example cosignature (c2sp.org/tlog-cosignature@v1.0.0, "Format"): its key ID and the
// timestamp 1679315147 of its "time" line, read from the signature bytes. The spec does not publish
// the example witness's public key, so the signature is checked against a second implementation: the
// vkey and line below were computed for this repository with Python's `cryptography` 48.0 Ed25519
// (seed 32 x 0x01, the spec's message layout written out by hand), then round trips and tampering.
#include <doctest/doctest.h>

#include "keyline/core/checkpoint.h"
#include "keyline/core/error.h"
#include "keyline/core/tlog_cosignature.h"
#include "vector_file.h"  // CHECK_THROWS_CODE

using namespace keyline::core;
using namespace keyline::core::tlog;

namespace {

const std::string kText = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

Cosigner witness(const std::string& name, std::uint8_t fill) { return Cosigner(name, SecureBytes(32, fill)); }

std::string note_with(const std::vector<std::string>& lines) {
  const auto log = note::Ed25519Signer("example.com/behind-the-sofa", SecureBytes(32, 9));
  std::string n = note::sign_note(kText, {&log});
  for (const auto& l : lines) n += l + "\n";
  return n;
}

}  // namespace

TEST_CASE("cosignature: the signed message is the header, the time line and the whole note text") {
  CHECK(cosigned_message(kText, 1679315147) == "cosignature/v1\ntime 1679315147\n" + kText);
  CHECK(cosigned_message(kText, 0) == "cosignature/v1\ntime 0\n" + kText);
}

TEST_CASE("cosignature: the spec's example line holds its key ID, then the timestamp big-endian, then 64 bytes") {
  const std::string line =
      "\xE2\x80\x94 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZ"
      "qhf5nNo0xUe+mbIUBkBIfZ+qnA==";
  const auto n = note::parse_note(note_with({line}));
  REQUIRE(n.signatures.size() == 2);
  const auto& s = n.signatures[1];
  CHECK(s.key_id == 0x8d66cf3fu);
  REQUIRE(s.signature.size() == 72);
  std::uint64_t t = 0;
  for (int i = 0; i < 8; ++i) t = (t << 8) | s.signature[i];
  CHECK(t == 1679315147u);  // the "time" line of the spec's signed-message example
}

TEST_CASE("cosignature: the same vkey and line as an independent Ed25519 implementation (deterministic signatures)") {
  const auto w = witness("witness.test/w1", 1);
  CHECK(w.key().text() == "witness.test/w1+1fbaba55+BIqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c");
  CHECK(w.cosign(kText, 1700000000) ==
        "\xE2\x80\x94 witness.test/w1 H7q6VQAAAABlU/EArXkKCy/lakbzWLN/EpXn9oTKaqbzKZFaK7JD3RVgMvzP+QWsKr+M4NjLWgP0RP3c3sOIa8QRhOIKl0PCYABYCQ==");
}

TEST_CASE("cosignature: key ID of type 0x04, vkey and private key text round trip, other types refused") {
  const auto w = witness("witness.test/w1", 1);
  const auto& k = w.key();
  CHECK(k.key_id() == note::key_id("witness.test/w1", 0x04, k.public_key()));
  CHECK(k.key_id() != note::key_id("witness.test/w1", 0x01, k.public_key()));
  const auto parsed = CosignerKey::parse(k.text());
  CHECK(parsed.public_key() == k.public_key());
  CHECK(parsed.key_id() == k.key_id());
  // A log's vkey (type 0x01) is not a cosigner key: the same public key must not serve both roles.
  const note::Ed25519Verifier as_log("witness.test/w1", k.public_key());
  CHECK_THROWS_CODE(CosignerKey::parse(as_log.text()), BadNote);
  const auto again = Cosigner::parse(w.text());
  CHECK(again.key().text() == k.text());
  SecureBytes bad = w.text();
  bad[0] = 'X';
  CHECK_THROWS_CODE(Cosigner::parse(bad), BadNote);
}

TEST_CASE("cosignature: verifies, and a changed text, timestamp, name or key is refused") {
  const auto w = witness("witness.test/w1", 1);
  const std::string line = w.cosign(kText, 1700000000);
  const auto good = note_with({line});
  CHECK(verified_cosigners(good, {w.key()}) == std::vector<std::string>{"witness.test/w1"});

  const auto s = note::parse_note(good).signatures[1];
  CHECK(w.key().verify(kText, s) == 1700000000u);
  // Another tree size under the same cosignature: the witness never said that.
  CHECK_THROWS_CODE(w.key().verify("example.com/behind-the-sofa\n20852164\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n", s),
                    NoteNotVerified);
  auto later = s;
  later.signature[7] ^= 1;  // the timestamp moved by a second
  CHECK_THROWS_CODE(w.key().verify(kText, later), NoteNotVerified);

  // A listed witness whose line fails rejects the note; an unlisted one is ignored.
  const auto other = witness("witness.test/w2", 2);
  CHECK(verified_cosigners(good, {other.key()}).empty());
  const auto forged = Cosigner("witness.test/w1", SecureBytes(32, 3));  // same name, another key: other key ID
  CHECK(verified_cosigners(note_with({forged.cosign(kText, 1)}), {w.key()}).empty());
  note::Signature bad = s;
  bad.signature[20] ^= 1;
  CHECK_THROWS_CODE(verified_cosigners(note_with({bad.line()}), {w.key()}), NoteNotVerified);
  // Two lines by one witness are refused rather than counted twice.
  CHECK_THROWS_CODE(verified_cosigners(note_with({line, w.cosign(kText, 5)}), {w.key()}), NoteNotVerified);
  CHECK(verified_cosigners(note_with({line, other.cosign(kText, 5)}), {w.key(), other.key()}).size() == 2);
  CHECK_THROWS_CODE(w.cosign(kText, 0x8000000000000000ull), BadNote);
}

TEST_CASE("cosignature: one key pinned twice, or under a second name, is one witness") {
  const auto w = witness("witness.test/w1", 1);
  const auto good = note_with({w.cosign(kText, 1700000000)});
  CHECK(verified_cosigners(good, {w.key(), w.key()}) == std::vector<std::string>{"witness.test/w1"});
  // The signed message holds no name, so the same key under another name verifies its own line too.
  const auto alias = Cosigner("witness.test/alias", SecureBytes(32, 1));
  const auto both = note_with({w.cosign(kText, 1700000000), alias.cosign(kText, 1700000000)});
  CHECK(verified_cosigners(both, {w.key(), alias.key()}).size() == 1);
  const auto other = witness("witness.test/w2", 2);
  CHECK(verified_cosigners(note_with({w.cosign(kText, 1), other.cosign(kText, 1)}), {w.key(), w.key(), other.key()})
            .size() == 2);
}
