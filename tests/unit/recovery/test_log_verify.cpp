// `keyline-recovery log verify-*` (issue #18): the strict parser of the transparency-dev probe form
// and the verdicts over every probe in tests/vectors/merkle (README there gives the fields).
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <unistd.h>

#include "keyline/core/error.h"
#include "keyline/recovery/log_verify.h"

namespace lv = keyline::recovery::log_verify;
namespace fs = std::filesystem;
using keyline::core::ErrorCode;

namespace {

const std::string kRoot8 = "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=";
const std::string kLeaf0 = "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=";
const std::string kProof =
    R"(["lqKW0iTyhcZ77pPDD4owkVfw2qNdxbh+QQt4YwoJz8c=","Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4=",)"
    R"("a0eq8p7jwq+a+Im8H7klTavTEXfxYjLdaqsDXKOb9uQ="])";

// The happy path of inclusion/1 with one field's JSON text replaced (or the whole tail appended).
std::string incl(const std::string& idx = "0", const std::string& size = "8", const std::string& tail = "") {
  return R"({"leafIdx":)" + idx + R"(,"treeSize":)" + size + R"(,"root":")" + kRoot8 + R"(","leafHash":")" + kLeaf0 +
         R"(","proof":)" + kProof + tail + "}";
}

void refused(const std::string& json, const std::string& why) {
  CAPTURE(json);
  try {
    (void)lv::parse_inclusion(json);
    FAIL("parsed: " << json);
  } catch (const keyline::core::FormatError& e) {
    CHECK(e.code() == ErrorCode::BadProof);
    CHECK_MESSAGE(std::string(e.what()).find(why) != std::string::npos, e.what());
  }
}

fs::path vectors() {
  const char* src = std::getenv("KEYLINE_SOURCE_DIR");
  REQUIRE(src != nullptr);
  return fs::path(src) / "tests/vectors/merkle";
}

}  // namespace

TEST_CASE("log_verify: the happy path parses and verifies") {
  const auto p = lv::parse_inclusion(incl());
  CHECK(p.leaf_index == 0);
  CHECK(p.tree_size == 8);
  CHECK(p.proof.size() == 3);
  CHECK(!p.notes.want_err.has_value());
  const auto r = lv::check(p);
  CHECK(r.valid);
  CHECK(r.reason.empty());
  CHECK(lv::format_report(r).find("valid\n") != std::string::npos);
  // The same proof for leaf 1 is wrong, and the report says why.
  const auto bad = lv::check(lv::parse_inclusion(incl("1")));
  CHECK(!bad.valid);
  CHECK(!bad.reason.empty());
  CHECK(lv::format_report(bad).find("INVALID: ") != std::string::npos);
}

TEST_CASE("log_verify: integers are 0..2^64-1 written as integers") {
  CHECK(lv::parse_inclusion(incl("0", "18446744073709551615")).tree_size == 18446744073709551615ULL);
  CHECK(lv::parse_inclusion(incl("9223372036854775808", "8")).leaf_index == 9223372036854775808ULL);
  refused(incl("-1"), "negative");
  refused(incl("0", "-8"), "negative");
  refused(incl("-0"), "negative");
  refused(incl("0", "8.0"), "not an integer");
  refused(incl("0", "8e0"), "not an integer");
  refused(incl("0.5"), "not an integer");
  refused(incl("0", "18446744073709551616"), "above 2^64-1");
  refused(incl("18446744073709551617", "8"), "above 2^64-1");
  refused(incl("0", "99999999999999999999999"), "");
  refused(incl("0", R"("8")"), "not an integer");
  refused(incl("0", "true"), "not an integer");
  refused(incl("0", "null"), "not an integer");
}

TEST_CASE("log_verify: only the form's fields, each once") {
  refused(incl("0", "8", R"(,"treeSize":7)"), "appears twice");
  refused(incl("0", "8", R"(,"leafIndex":1)"), "unknown field");
  refused(R"({"treeSize":8,"root":")" + kRoot8 + R"(","leafHash":")" + kLeaf0 + R"(","proof":[]})", "missing field \"leafIdx\"");
  refused(R"({"leafIdx":0,"treeSize":8,"root":")" + kRoot8 + R"(","leafHash":")" + kLeaf0 + R"("})", "missing field \"proof\"");
  refused(incl("0", "8", R"(,"desc":5)"), "desc");
  refused(incl("0", "8", R"(,"wantErr":"false")"), "wantErr");
  // A consistency file given to verify-inclusion is refused, not read as an empty inclusion proof.
  refused(R"({"size1":1,"size2":8,"root1":")" + kLeaf0 + R"(","root2":")" + kRoot8 + R"(","proof":[]})", "unknown field");
}

TEST_CASE("log_verify: hashes are strict base64 strings of any length, proof null or [] is empty") {
  const std::string head = R"({"leafIdx":0,"treeSize":1,"root":")" + kLeaf0 + R"(","leafHash":")" + kLeaf0 + R"(","proof":)";
  CHECK(lv::parse_inclusion(head + "null}").proof.empty());
  CHECK(lv::parse_inclusion(head + "[]}").proof.empty());
  CHECK(lv::check(lv::parse_inclusion(head + "null}")).valid);
  CHECK(lv::parse_inclusion(head + R"(["", "AAAA"]})").proof.at(1).size() == 3);
  refused(head + R"("AAAA"})", "neither null nor an array");
  refused(head + R"([null]})", "proof[0]");
  refused(head + R"([["AAAA"]]})", "");
  refused(head + R"(["AAA"]})", "proof[0]\" is not standard base64");
  refused(head + R"(["AA AA"]})", "not standard base64");
  refused(head + R"(["AA-_"]})", "not standard base64");
  refused(R"({"leafIdx":0,"treeSize":1,"root":null,"leafHash":")" + kLeaf0 + R"(","proof":[]})", "\"root\"");
  const auto empty = lv::parse_inclusion(R"({"leafIdx":0,"treeSize":1,"root":"","leafHash":"","proof":[]})");
  CHECK(empty.root.empty());
  CHECK(!lv::check(empty).valid);
}

TEST_CASE("log_verify: one JSON object and nothing else") {
  refused("", "not JSON");
  refused("[]", "not a JSON object");
  refused("8", "not ");
  refused(incl() + " {}", "");
  refused(incl() + "x", "");
  refused(incl().substr(0, 40), "not JSON");
  refused(std::string(1000, '['), "not JSON");
  refused("/* c */" + incl(), "not JSON");
  std::string nul = incl("0", "8", R"(,"desc":"a)");
  nul += '\0';
  nul += "b\"}";
  refused(nul, "");
}

TEST_CASE("log_verify: files: unreadable and oversized ones are usage errors, never read as a proof") {
  CHECK_THROWS_AS(lv::check_inclusion_file("/nonexistent/keyline-proof.json"), keyline::core::ConfigError);
  const fs::path big = fs::temp_directory_path() / ("keyline-lv-big-" + std::to_string(::getpid()) + ".json");
  {
    std::ofstream out(big, std::ios::binary);
    out << incl("0", "8", R"(,"desc":")" + std::string(lv::max_file_size, 'a') + "\"");
  }
  CHECK_THROWS_AS(lv::check_inclusion_file(big.string()), keyline::core::ConfigError);
  fs::remove(big);
}

TEST_CASE("log_verify: every transparency-dev probe gives its wantErr") {
  std::size_t files = 0, valid = 0;
  for (const std::string kind : {"inclusion", "consistency"}) {
    for (const auto& e : fs::recursive_directory_iterator(vectors() / kind)) {
      if (!e.is_regular_file() || e.path().extension() != ".json") continue;
      CAPTURE(e.path().string());
      std::ifstream in(e.path(), std::ios::binary);
      const std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      const bool inclusion = kind == "inclusion";
      const auto notes = inclusion ? lv::parse_inclusion(json).notes : lv::parse_consistency(json).notes;
      REQUIRE(notes.want_err.has_value());
      const auto r = inclusion ? lv::check_inclusion_file(e.path().string()) : lv::check_consistency_file(e.path().string());
      CHECK(r.valid == !*notes.want_err);
      CHECK(r.valid == r.reason.empty());
      ++files;
      if (r.valid) ++valid;
    }
  }
  CHECK(files == 170);
  CHECK(valid == 11);
}
