// The ceremony log (docs/ceremony.md, "The log"): each kind of tampering is found and named by line.
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/hex.h>
#include <botan/pubkey.h>

#include "keyline/ceremony/errors.h"
#include "keyline/ceremony/log.h"

using namespace keyline::ceremony;

namespace {

struct TempLog {
  std::string path;
  TempLog() {
    char tmpl[] = "/tmp/ceremony-log-XXXXXX";
    path = std::string(mkdtemp(tmpl)) + "/ceremony.log";
  }
  ~TempLog() { std::filesystem::remove_all(std::filesystem::path(path).parent_path()); }
};

Botan::AutoSeeded_RNG& rng() {
  static Botan::AutoSeeded_RNG r;
  return r;
}

Botan::ECDSA_PrivateKey new_key() { return Botan::ECDSA_PrivateKey(rng(), Botan::EC_Group("secp256r1")); }

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

std::string join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

// Six lines: three operations, each an intent and an outcome.
std::string six_lines(const std::string& path, const Botan::ECDSA_PrivateKey& key) {
  CeremonyLog log(path, key, key, rng());
  for (int i = 0; i < 3; ++i) {
    const auto in = log.append("sign", "intent", {{"profile", "station"}, {"csr_sha256", std::string(64, 'a' + i)}});
    log.append("sign", "outcome", {{"intent", std::to_string(in.seq)}, {"result", "issued"}, {"serial", "0" + std::to_string(i)}});
  }
  return read_log_file(path);
}

std::string first_finding(const std::string& text, const Botan::Public_Key& key, std::size_t& line) {
  const auto r = verify_log_text(text, key);
  REQUIRE_FALSE(r.findings.empty());
  line = r.findings.front().line;
  return r.findings.front().reason;
}

}  // namespace

TEST_CASE("an untouched log verifies: sequence 1..6, every outcome matched to its intent") {
  TempLog t;
  const auto key = new_key();
  const auto text = six_lines(t.path, key);
  const auto r = verify_log_text(text, key);
  CHECK(r.findings.empty());
  CHECK(r.warnings.empty());
  CHECK(r.lines == 6);
  CHECK(r.last_seq == 6);
  CHECK(lines_of(text).front().find("\"prev\":\"" + genesis_hash(key_id(key)) + "\"") != std::string::npos);
}

TEST_CASE("a changed line is named: its signature no longer verifies") {
  TempLog t;
  const auto key = new_key();
  auto lines = lines_of(six_lines(t.path, key));
  const auto pos = lines[3].find("\"result\":\"issued\"");
  REQUIRE(pos != std::string::npos);
  lines[3].replace(pos, 17, "\"result\":\"failed\"");
  std::size_t line = 0;
  const auto why = first_finding(join(lines), key, line);
  CHECK(line == 4);
  CHECK(why.find("signature does not verify") != std::string::npos);
}

TEST_CASE("a changed line with re-encoded but equivalent JSON is still a changed line") {
  TempLog t;
  const auto key = new_key();
  auto lines = lines_of(six_lines(t.path, key));
  lines[1].replace(lines[1].find("\"seq\":"), 6, "\"seq\": ");
  std::size_t line = 0;
  const auto why = first_finding(join(lines), key, line);
  CHECK(line == 2);
  CHECK(why.find("not a canonical log line") != std::string::npos);
}

TEST_CASE("a dropped line is named by the sequence number that is missing") {
  TempLog t;
  const auto key = new_key();
  auto lines = lines_of(six_lines(t.path, key));
  lines.erase(lines.begin() + 2);  // sequence 3
  std::size_t line = 0;
  const auto why = first_finding(join(lines), key, line);
  CHECK(line == 3);
  CHECK(why.find("sequence 3 dropped") != std::string::npos);
}

TEST_CASE("reordered lines are named as reordered, not as dropped") {
  TempLog t;
  const auto key = new_key();
  auto lines = lines_of(six_lines(t.path, key));
  std::swap(lines[2], lines[4]);
  std::size_t line = 0;
  const auto why = first_finding(join(lines), key, line);
  CHECK(line == 3);
  CHECK(why.find("reordered") != std::string::npos);
}

TEST_CASE("a repeated line (a replay of a genuine signed line) is named") {
  TempLog t;
  const auto key = new_key();
  auto lines = lines_of(six_lines(t.path, key));
  lines.insert(lines.begin() + 3, lines[2]);
  std::size_t line = 0;
  const auto why = first_finding(join(lines), key, line);
  CHECK(line == 4);
  CHECK(why.find("a line repeated") != std::string::npos);
}

TEST_CASE("a line signed by another key is named, whatever key id it claims") {
  TempLog t, other;
  const auto key = new_key();
  const auto evil = new_key();
  auto lines = lines_of(six_lines(t.path, key));
  // A whole log made by another key: its line 3 dropped into ours.
  auto forged = lines_of(six_lines(other.path, evil));
  auto spliced = lines;
  spliced[2] = forged[2];
  std::size_t line = 0;
  auto why = first_finding(join(spliced), key, line);
  CHECK(line == 3);
  CHECK(why.find("signed by another key") != std::string::npos);
  // The same line re-signed by the other key but claiming the root's key id.
  auto entry = *parse_line(lines[2]);
  entry.fields.emplace_back("note", "forged");
  Botan::PK_Signer s(evil, rng(), "EMSA1(SHA-256)", Botan::IEEE_1363);
  const auto body = canonical_body(entry);
  entry.sig = Botan::hex_encode(s.sign_message(reinterpret_cast<const std::uint8_t*>(body.data()), body.size(), rng()), false);
  spliced = lines;
  spliced[2] = to_line(entry);
  why = first_finding(join(spliced), key, line);
  CHECK(line == 3);
  CHECK(why.find("signature does not verify") != std::string::npos);
}

TEST_CASE("a log of another root does not verify from its first line") {
  TempLog t;
  const auto key = new_key();
  const auto text = six_lines(t.path, key);
  const auto other = new_key();
  std::size_t line = 0;
  CHECK(first_finding(text, other, line).find("signed by another key") != std::string::npos);
  CHECK(line == 1);
}

TEST_CASE("a torn last line is named, an intent without outcome is a warning") {
  TempLog t;
  const auto key = new_key();
  CeremonyLog log(t.path, key, key, rng());
  log.append("sign", "intent", {{"profile", "device-ca"}});
  auto r = verify_log_text(read_log_file(t.path), key);
  CHECK(r.findings.empty());
  REQUIRE(r.warnings.size() == 1);
  CHECK(r.warnings.front().find("no outcome") != std::string::npos);
  std::size_t line = 0;
  const auto text = read_log_file(t.path);
  CHECK(first_finding(text.substr(0, text.size() - 10), key, line).find("incomplete last line") != std::string::npos);
  CHECK(line == 1);
}

TEST_CASE("append refuses a tampered log and adds nothing to it") {
  TempLog t;
  const auto key = new_key();
  auto lines = lines_of(six_lines(t.path, key));
  lines.erase(lines.begin() + 4);
  { std::ofstream(t.path, std::ios::trunc) << join(lines); }
  CeremonyLog log(t.path, key, key, rng());
  try {
    log.append("sign", "intent", {});
    FAIL("append accepted a tampered log");
  } catch (const keyline::core::Error& e) {
    CHECK(e.code() == errc::LogInvalid);
    CHECK(std::string(e.what()).find("line 5") != std::string::npos);
  }
  CHECK(read_log_file(t.path) == join(lines));
}

TEST_CASE("field values with quotes, backslashes and control characters round-trip exactly") {
  LogEntry e;
  e.seq = 7;
  e.time = "2026-12-01T00:00:00Z";
  e.prev = "00";
  e.key = "11";
  e.op = "sign";
  e.phase = "outcome";
  e.fields = {{"reason", "a \"quoted\" \\ back\nslash\x01 and \xc3\xa9"}};
  e.sig = "ab";
  const auto line = to_line(e);
  CHECK(line.find('\n') == std::string::npos);
  const auto back = parse_line(line);
  REQUIRE(back);
  CHECK(back->fields == e.fields);
  // A duplicate reserved member would read differently to another JSON parser: refused.
  auto dup = e;
  dup.fields.emplace_back("seq", "1");
  CHECK_FALSE(parse_line(to_line(dup)));
}

TEST_CASE("log show prints control characters escaped, never raw to the terminal") {
  TempLog t;
  const auto key = new_key();
  CeremonyLog log(t.path, key, key, rng());
  log.append("sign", "intent", {{"csr_subject", "CN=\x1b]0;owned\x07x"}});
  const auto shown = show_log_text(read_log_file(t.path));
  CHECK(shown.find('\x1b') == std::string::npos);
  CHECK(shown.find('\x07') == std::string::npos);
  CHECK(shown.find("CN=\\x1b]0;owned\\x07x") != std::string::npos);
}

TEST_CASE("log show escapes C1 controls, bidi overrides and invalid UTF-8, and keeps printable UTF-8") {
  TempLog t;
  const auto key = new_key();
  CeremonyLog log(t.path, key, key, rng());
  log.append("sign", "intent", {{"csr_subject", "CN=a\xc2\x9b" "2J b\xe2\x80\xae" "c \xff d \xc3\x9f"}});
  const auto shown = show_log_text(read_log_file(t.path));
  CHECK(shown.find("\xc2\x9b") == std::string::npos);
  CHECK(shown.find("\xe2\x80\xae") == std::string::npos);
  CHECK(shown.find("CN=a\\xc2\\x9b2J b\\xe2\\x80\\xaec \\xff d \xc3\x9f") != std::string::npos);
}
