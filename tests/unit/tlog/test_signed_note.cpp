// C2SP signed-note v1.0.0 and tlog-checkpoint v1.0.0. Known answers: the PeterNeumann key, text and
// signature of golang.org/x/mod/sumdb/note (the example in its package documentation, note.go,
// BSD-3-Clause; values only) and the two examples in the C2SP texts themselves.
#include <doctest/doctest.h>

#include "keyline/core/checkpoint.h"
#include "keyline/core/error.h"
#include "keyline/core/signed_note.h"
#include "vector_file.h"  // CHECK_THROWS_CODE

using namespace keyline::core;
using namespace keyline::core::note;
using keyline::core::tlog::Checkpoint;

namespace {

const std::string peter_vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const std::string peter_skey_b64 = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";  // 0x01 || seed
const std::string peter_text =
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const std::string peter_sig_line =
    "\xE2\x80\x94 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";
const std::string peter_note = peter_text + "\n" + peter_sig_line + "\n";

Ed25519Signer peter_signer() {
  const Bytes raw = from_base64(peter_skey_b64);
  REQUIRE(raw.size() == 33);
  REQUIRE(raw[0] == 0x01);
  return Ed25519Signer("PeterNeumann", SecureBytes(raw.begin() + 1, raw.end()));
}

Ed25519Signer test_signer(const std::string& name, std::uint8_t fill) {
  return Ed25519Signer(name, SecureBytes(32, fill));
}

// Accepts every signature: lets a test reach the rules that come before the cryptography.
class AnySignature : public NoteVerifier {
 public:
  AnySignature(std::string name, std::uint32_t id) : m_name(std::move(name)), m_id(id) {}
  const std::string& name() const override { return m_name; }
  std::uint32_t key_id() const override { return m_id; }
  bool verify(const std::string&, const Bytes&) const override { return true; }

 private:
  std::string m_name;
  std::uint32_t m_id;
};

// S + L (little-endian S in bytes 32..63): the same point equation, a different encoding.
Bytes add_group_order(Bytes sig) {
  static const std::uint8_t order_le[32] = {0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7,
                                            0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10};
  unsigned carry = 0;
  for (int i = 0; i < 32; ++i) {
    const unsigned v = sig[32 + i] + order_le[i] + carry;
    sig[32 + i] = static_cast<std::uint8_t>(v);
    carry = v >> 8;
  }
  return sig;
}

}  // namespace

TEST_CASE("two signatures by one known key are refused, even if both verify") {
  const AnySignature any("log.example/a", 0x01020304);
  const std::string text = "t\n";
  const std::string l1 = Signature{"log.example/a", 0x01020304, Bytes(64, 1)}.line();
  const std::string l2 = Signature{"log.example/a", 0x01020304, Bytes(64, 2)}.line();
  CHECK(open_note(text + "\n" + l1 + "\n", {&any}).verified.size() == 1);
  CHECK_THROWS_CODE(open_note(text + "\n" + l1 + "\n" + l2 + "\n", {&any}), NoteNotVerified);
}

TEST_CASE("Ed25519: a signature with S + L (RFC 8032 section 5.1.7) is refused") {
  const auto s = test_signer("log.example/a", 4);
  const Ed25519Verifier v("log.example/a", s.public_key());
  const std::string text = "log.example/a\n1\nAAAA\n";
  const Bytes sig = s.sign(text);
  REQUIRE(v.verify(text, sig));
  const Bytes malleated = add_group_order(sig);
  REQUIRE(malleated != sig);
  CHECK_FALSE(v.verify(text, malleated));
  const std::string note = text + "\n" + Signature{s.name(), s.key_id(), malleated}.line() + "\n";
  CHECK_THROWS_CODE(open_note(note, {&v}), NoteNotVerified);
}

TEST_CASE("sumdb/note known answer: key ID, verifier key, signature byte for byte, open") {
  const auto signer = peter_signer();
  CHECK(signer.key_id() == 0xc74f20a3);
  CHECK(signer.verifier_key() == peter_vkey);
  const auto v = Ed25519Verifier::parse(peter_vkey);
  CHECK(v.key_id() == 0xc74f20a3);
  CHECK(v.text() == peter_vkey);
  CHECK(sign_note(peter_text, {&signer}) == peter_note);
  const auto opened = open_note(peter_note, {&v});
  CHECK(opened.text == peter_text);
  REQUIRE(opened.verified.size() == 1);
  CHECK(opened.verified[0].name == "PeterNeumann");
  CHECK(opened.unverified.empty());
}

TEST_CASE("the C2SP signed-note example: a text with a blank line splits at the last one") {
  const std::string msg =
      "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \xC3\xA8 subito sera.\n\n"
      "\xE2\x80\x94 quasimodo.example/salvatore "
      "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";
  const Note n = parse_note(msg);
  CHECK(n.text == "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \xC3\xA8 subito sera.\n");
  REQUIRE(n.signatures.size() == 1);
  CHECK(n.signatures[0].name == "quasimodo.example/salvatore");
  CHECK(n.signatures[0].signature.size() == 64);
  CHECK(n.signatures[0].line() + "\n" == msg.substr(msg.rfind("\n\n") + 2));
  // Its key is not published: with only other keys known, nothing verifies.
  const auto v = Ed25519Verifier::parse(peter_vkey);
  CHECK_THROWS_CODE(open_note(msg, {&v}), NoteNotVerified);
}

TEST_CASE("open_note: unknown keys ignored, a known key's bad signature rejects, one known signature needed") {
  const auto log = test_signer("log.example/a", 1);
  const auto other = test_signer("witness.example/w", 2);
  const auto same_name = test_signer("log.example/a", 3);  // shares the name, not the ID
  const Ed25519Verifier log_v("log.example/a", log.public_key());
  const std::string text = "log.example/a\n5\nAAAA\n";
  const std::string both = sign_note(text, {&other, &log, &same_name});
  const auto opened = open_note(both, {&log_v});
  CHECK(opened.verified.size() == 1);
  CHECK(opened.unverified.size() == 2);
  CHECK_THROWS_CODE(open_note(sign_note(text, {&other}), {&log_v}), NoteNotVerified);
  CHECK_THROWS_CODE(open_note(sign_note(text, {&same_name}), {&log_v}), NoteNotVerified);

  // A known key's signature over another text: rejected even though the note also has nothing else.
  std::string forged = both;
  forged.replace(forged.find("\n5\n"), 3, "\n6\n");
  CHECK_THROWS_CODE(open_note(forged, {&log_v}), NoteNotVerified);
  // The log's signature line twice: malformed; a second, different signature by the known key: refused.
  const std::string log_line = Signature{log.name(), log.key_id(), log.sign(text)}.line();
  CHECK_THROWS_CODE(open_note(text + "\n" + log_line + "\n" + log_line + "\n", {&log_v}), BadNote);
  Bytes bad_sig = log.sign(text);
  bad_sig[0] ^= 1;
  const std::string second = Signature{log.name(), log.key_id(), bad_sig}.line();
  CHECK_THROWS_CODE(open_note(text + "\n" + log_line + "\n" + second + "\n", {&log_v}), NoteNotVerified);
  CHECK_THROWS_CODE(open_note(text + "\n" + second + "\n" + log_line + "\n", {&log_v}), NoteNotVerified);
}

TEST_CASE("parse_note refuses what the format forbids") {
  const std::string sig = peter_sig_line + "\n";
  CHECK_NOTHROW(parse_note(peter_note));
  CHECK_THROWS_CODE(parse_note(peter_note.substr(0, peter_note.size() - 1)), BadNote);      // no final newline
  CHECK_THROWS_CODE(parse_note(peter_text + sig), BadNote);                                  // no blank line
  CHECK_THROWS_CODE(parse_note(peter_text + "\n"), BadNote);                                 // no signature
  CHECK_THROWS_CODE(parse_note(peter_text + "\n" + sig + "\n"), BadNote);                    // blank after sigs
  CHECK_THROWS_CODE(parse_note(peter_text + "\n-- PeterNeumann x08go/ZJku\n"), BadNote);     // not an em dash
  CHECK_THROWS_CODE(parse_note(peter_text + "\n\xE2\x80\x94 PeterNeumann\n"), BadNote);       // no signature
  CHECK_THROWS_CODE(parse_note(peter_text + "\n\xE2\x80\x94  x08go/ZJk=\n"), BadNote);        // empty name
  CHECK_THROWS_CODE(parse_note(peter_text + "\n\xE2\x80\x94 a+b x08go/ZJkuBQ==\n"), BadNote);  // '+' in name
  CHECK_THROWS_CODE(parse_note(peter_text + "\n\xE2\x80\x94 a\xC2\xA0" "b x08go/ZJkuBQ==\n"), BadNote);  // NBSP
  CHECK_THROWS_CODE(parse_note(peter_text + "\n\xE2\x80\x94 a x08go/Z\n"), BadNote);          // not base64
  CHECK_THROWS_CODE(parse_note(peter_text + "\n\xE2\x80\x94 a x08goA==\n"), BadNote);         // < 5 bytes
  CHECK_THROWS_CODE(parse_note(peter_text + "\n\xE2\x80\x94 a x08go/ZJkuBQ== \n"), BadNote);  // trailing space
  CHECK_THROWS_CODE(parse_note("a\tb\n\n" + sig), BadNote);                                  // control char
  CHECK_THROWS_CODE(parse_note("a\rb\n\n" + sig), BadNote);
  CHECK_THROWS_CODE(parse_note("a\xC0\xAF\n\n" + sig), BadNote);                             // overlong UTF-8
  CHECK_THROWS_CODE(parse_note("a\xED\xA0\x80\n\n" + sig), BadNote);                         // surrogate
  CHECK_THROWS_CODE(parse_note("a\xE2\x80\n\n" + sig), BadNote);                             // truncated
  std::string many = peter_text + "\n";
  for (std::size_t i = 0; i < max_signatures; ++i) many += sig;
  CHECK(parse_note(many).signatures.size() == max_signatures);
  CHECK_THROWS_CODE(parse_note(many + sig), BadNote);
  CHECK_THROWS_CODE(parse_note(std::string(max_note_bytes, 'a') + "\n\n" + sig), BadNote);
}

TEST_CASE("verifier keys: mangled forms refused, the key ID must match") {
  CHECK_NOTHROW(Ed25519Verifier::parse(peter_vkey));
  CHECK_NOTHROW(Ed25519Verifier::parse("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"));
  for (const std::string& bad : std::vector<std::string>{
           std::string("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),  // wrong ID
           std::string("PeterNeumanm+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),  // other name
           std::string("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),   // 7 digits
           std::string("PeterNeumann+c74f20a3+Apc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),   // not base64
           std::string("PeterNeumann+c74f20a3+AhpczkcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),  // type 2
           std::string("PeterNeumann+c74f20a3"), std::string("+c74f20a3+ARpc2Qc="), std::string(""),
       }) {
    INFO(bad);
    CHECK_THROWS_CODE(Ed25519Verifier::parse(bad), BadNote);
  }
  CHECK_THROWS_CODE(Ed25519Signer("a b", SecureBytes(32, 1)), BadNote);
  CHECK_THROWS_CODE(Ed25519Signer("a", SecureBytes(31, 1)), BadNote);
  CHECK_THROWS_CODE(Ed25519Verifier("a", Bytes(31, 1)), BadNote);
  const auto fresh = Ed25519Signer::generate("keyline.example/log");
  CHECK(Ed25519Verifier::parse(fresh.verifier_key()).public_key() == fresh.public_key());
}

TEST_CASE("sign_note refuses texts that would not parse back") {
  const auto s = test_signer("k", 7);
  CHECK_THROWS_CODE(sign_note("", {&s}), BadNote);
  CHECK_THROWS_CODE(sign_note("no newline", {&s}), BadNote);
  CHECK_THROWS_CODE(sign_note("ends blank\n\n", {&s}), BadNote);
  CHECK_THROWS_CODE(sign_note("tab\there\n", {&s}), BadNote);
  CHECK_THROWS_CODE(sign_note("fine\n", {}), BadNote);
  const Ed25519Verifier v("k", s.public_key());
  CHECK(open_note(sign_note("a\n\nb\n", {&s}), {&v}).text == "a\n\nb\n");
}

TEST_CASE("checkpoints: the C2SP example, strict lines, round trip, signed by the log key") {
  const std::string example = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
  const Checkpoint c = tlog::parse_checkpoint(example);
  CHECK(c.origin == "example.com/behind-the-sofa");
  CHECK(c.size == 20852163);
  CHECK(to_base64(c.root.data(), c.root.size()) == "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=");
  CHECK(c.extensions.empty());
  CHECK(tlog::checkpoint_text(c) == example);
  const std::string root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
  CHECK(tlog::parse_checkpoint("o\n0\n" + root).size == 0);
  CHECK(tlog::parse_checkpoint("o\n18446744073709551615\n" + root).size == 18446744073709551615ull);
  CHECK(tlog::parse_checkpoint("o\n1\n" + root + "ext one\next two\n").extensions.size() == 2);
  for (const std::string& bad : std::vector<std::string>{
           "o\n1\n" + root.substr(0, root.size() - 1),  // no final newline
           "o\n1\n", "\n1\n" + root, "o\n01\n" + root, "o\n00\n" + root, "o\n+1\n" + root, "o\n-0\n" + root,
           "o\n1 \n" + root, "o\n18446744073709551616\n" + root, "o\n99999999999999999999\n" + root,
           "o\n\n" + root, "o\n1\n" + root + "\n", "o\n1\n" + root + "ext\n\n",
           std::string("o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I\n"),      // no padding
           std::string("o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=A\n"),    // trailing garbage
           std::string("o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxqw==\n"),     // 31 bytes
           std::string("o\n1\nCsUYapGGPo4dkMgIAUqom_Xajj7h2fB2MPA3j2jxq2I=\n"),     // URL alphabet
           "o\tx\n1\n" + root, std::string(tlog::max_origin_bytes + 1, 'o') + "\n1\n" + root,
       }) {
    INFO(bad);
    CHECK_THROWS_CODE(tlog::parse_checkpoint(bad), BadCheckpoint);
  }
  std::string exts = "o\n1\n" + root;
  for (std::size_t i = 0; i < tlog::max_extension_lines; ++i) exts += "e\n";
  CHECK_NOTHROW(tlog::parse_checkpoint(exts));
  CHECK_THROWS_CODE(tlog::parse_checkpoint(exts + "e\n"), BadCheckpoint);

  const auto log = test_signer("keyline.example/log", 9);
  const auto impostor = test_signer("keyline.example/log", 10);
  const Ed25519Verifier log_v("keyline.example/log", log.public_key());
  Checkpoint mine{"keyline.example/log", 42, c.root, {}};
  const std::string signed_cp = tlog::sign_checkpoint(mine, {&log});
  const auto opened = tlog::open_checkpoint(signed_cp, log_v, "keyline.example/log");
  CHECK(opened.checkpoint == mine);
  CHECK_THROWS_CODE(tlog::open_checkpoint(tlog::sign_checkpoint(mine, {&impostor}), log_v, "keyline.example/log"),
                    NoteNotVerified);
  CHECK_THROWS_CODE(tlog::open_checkpoint(signed_cp, log_v, "keyline.example/other"), BadCheckpoint);
  Checkpoint foreign{"other.example/log", 42, c.root, {}};
  CHECK_THROWS_CODE(tlog::open_checkpoint(tlog::sign_checkpoint(foreign, {&log}), log_v, "keyline.example/log"),
                    BadCheckpoint);
  CHECK_THROWS_CODE(tlog::checkpoint_text(Checkpoint{"two\nlines", 1, c.root, {}}), BadCheckpoint);
  CHECK_THROWS_CODE(tlog::checkpoint_text(Checkpoint{"o", 1, c.root, {""}}), BadCheckpoint);
}
