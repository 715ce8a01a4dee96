// The KPS access-control policy (kps/include/keyline/kps/policy.h): AC1 at request, AC2 before the
// transport certificate and at delivery, per key label (docs/kps.md "Policy").
#include <doctest/doctest.h>

#include "keyline/core/error.h"
#include "keyline/kps/kps.h"
#include "keyline/kps/policy.h"

using keyline::kps::Policy;

namespace {
const std::string A = "4B4C0001000000000001";
const std::string B = "4B4C0001000000000002";
const std::string C = "4B4C0001000000000003";
const std::string D = "4B4C0001000000000004";

std::string refusal(const std::string& text) {
  try {
    Policy::parse(text);
  } catch (const keyline::core::FormatError& e) {
    CHECK(e.code() == keyline::kps::errc::BadPolicy);
    return e.what();
  }
  FAIL("accepted: " << text);
  return {};
}
}  // namespace

TEST_CASE("nothing is allowed by an empty policy") {
  const auto p = Policy::parse("# nothing\n\n");
  CHECK(p.rules() == 0);
  CHECK_FALSE(p.may_request(A, B, "k"));
  CHECK_FALSE(p.may_deliver(A, B, "k"));
}

TEST_CASE("request, deliver and allow decide the two checks separately") {
  const auto p = Policy::parse("allow " + A + " " + B + " k  # both\nrequest " + A + " " + C + " k\ndeliver " + A + " " +
                               D + " k\n");
  CHECK(p.may_request(A, B, "k"));
  CHECK(p.may_deliver(A, B, "k"));
  CHECK_FALSE(p.may_request(B, A, "k"));  // rules have a direction
  CHECK(p.may_request(A, C, "k"));
  CHECK_FALSE(p.may_deliver(A, C, "k"));
  CHECK_FALSE(p.may_request(A, D, "k"));
  CHECK(p.may_deliver(A, D, "k"));
}

TEST_CASE("a rule covers the labels it names, not the source's other keys (issue #17)") {
  const auto p = Policy::parse("allow " + A + " " + B + " user-key\nallow " + A + " " + C + " app.*\n");
  CHECK(p.may_request(A, B, "user-key"));
  CHECK(p.may_deliver(A, B, "user-key"));
  CHECK_FALSE(p.may_request(A, B, "other-key"));
  CHECK_FALSE(p.may_deliver(A, B, "other-key"));
  CHECK_FALSE(p.may_deliver(A, B, "user-key2"));
  CHECK(p.may_deliver(A, C, "app.mail"));
  CHECK(p.may_deliver(A, C, "app.x.y"));
  CHECK_FALSE(p.may_deliver(A, C, "app"));
  CHECK_FALSE(p.may_deliver(A, C, "user-key"));
}

TEST_CASE("chip IDs are matched case-insensitively and * matches any chip") {
  std::string lower = A;
  for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const auto p = Policy::parse("allow " + lower + " * *\n");
  CHECK(p.may_request(A, B, "x"));
  CHECK(p.may_deliver(A, C, "y"));
  CHECK_FALSE(p.may_request(B, A, "x"));
}

TEST_CASE("a device never transfers to itself, even under a wildcard") {
  const auto p = Policy::parse("allow * * *\n");
  CHECK(p.may_request(A, B, "k"));
  CHECK_FALSE(p.may_request(A, A, "k"));
  CHECK_FALSE(p.may_deliver(B, B, "k"));
}

TEST_CASE("groups of one owner, per label") {
  const auto p = Policy::parse("group alice " + A + " " + B + " " + C + "\ngroup bob " + D +
                               "\nallow-group alice shared-?\n");
  CHECK(p.may_request(A, C, "shared-1"));
  CHECK(p.may_deliver(C, B, "shared-2"));
  CHECK_FALSE(p.may_deliver(C, B, "private"));
  CHECK_FALSE(p.may_request(A, D, "shared-1"));
  CHECK_FALSE(p.may_deliver(D, A, "shared-1"));
}

TEST_CASE("--allow rules name their labels") {
  Policy p;
  p.allow(A + ":" + B + ":user-*");
  CHECK(p.may_request(A, B, "user-key"));
  CHECK(p.may_deliver(A, B, "user-key"));
  CHECK_FALSE(p.may_deliver(A, B, "root-key"));
  CHECK_FALSE(p.may_request(B, A, "user-key"));
  CHECK_THROWS_AS(p.allow(A + B), keyline::core::FormatError);
  CHECK_THROWS_AS(p.allow("nonsense:" + B + ":k"), keyline::core::FormatError);
  CHECK_THROWS_AS(p.allow(A + ":" + B + ":bad/label"), keyline::core::FormatError);
  try {
    p.allow(A + ":" + B);  // v1 form
    FAIL("accepted");
  } catch (const keyline::core::FormatError& e) {
    CHECK(std::string(e.what()).find("--allow " + A + ":" + B + ":user-key") != std::string::npos);
  }
}

TEST_CASE("a v1 rule without a label is refused, naming the line and the fix") {
  for (const std::string verb : {"allow", "request", "deliver"}) {
    const auto what = refusal("# v1\n" + verb + " " + A + " " + B + "\n");
    CHECK(what.find("line 2") != std::string::npos);
    CHECK(what.find("LABELGLOB") != std::string::npos);
    CHECK(what.find(verb + " SOURCE TARGET user-key") != std::string::npos);
  }
  const auto what = refusal("group g " + A + " " + B + "\nallow-group g\n");
  CHECK(what.find("line 2") != std::string::npos);
  CHECK(what.find("allow-group g user-key") != std::string::npos);
}

TEST_CASE("a bad line is refused with its line number") {
  const std::vector<std::string> bad = {
      "allow " + A,                         // one chip
      "allow " + A + " " + B + " x y",      // four words
      "permit " + A + " " + B + " k",       // unknown verb
      "allow 1234 " + B + " k",             // not a chip ID
      "allow " + A + " " + B + " a/b",      // not a label glob
      "group g *",                          // wildcard member
  };
  for (const auto& line : bad) {
    CAPTURE(line);
    CHECK(refusal("# first\n" + line + "\n").find("line 2") != std::string::npos);
  }
  CHECK(refusal("allow-group nobody k\n").find("nobody") != std::string::npos);
}
