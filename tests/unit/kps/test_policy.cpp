// The KPS access-control policy (kps/include/keyline/kps/policy.h): AC1 at request, AC2 at delivery.
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
}  // namespace

TEST_CASE("nothing is allowed by an empty policy") {
  const auto p = Policy::parse("# nothing\n\n");
  CHECK(p.rules() == 0);
  CHECK_FALSE(p.may_request(A, B));
  CHECK_FALSE(p.may_deliver(A, B));
}

TEST_CASE("request, deliver and allow decide the two checks separately") {
  const auto p = Policy::parse("allow " + A + " " + B + "   # both\nrequest " + A + " " + C + "\ndeliver " + A + " " + D + "\n");
  CHECK(p.may_request(A, B));
  CHECK(p.may_deliver(A, B));
  CHECK_FALSE(p.may_request(B, A));  // rules have a direction
  CHECK(p.may_request(A, C));
  CHECK_FALSE(p.may_deliver(A, C));
  CHECK_FALSE(p.may_request(A, D));
  CHECK(p.may_deliver(A, D));
}

TEST_CASE("chip IDs are matched case-insensitively and * matches any chip") {
  std::string lower = A;
  for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const auto p = Policy::parse("allow " + lower + " *\n");
  CHECK(p.may_request(A, B));
  CHECK(p.may_deliver(A, C));
  CHECK_FALSE(p.may_request(B, A));
}

TEST_CASE("a device never transfers to itself, even under a wildcard") {
  const auto p = Policy::parse("allow * *\n");
  CHECK(p.may_request(A, B));
  CHECK_FALSE(p.may_request(A, A));
  CHECK_FALSE(p.may_deliver(B, B));
}

TEST_CASE("groups of one owner") {
  const auto p = Policy::parse("group alice " + A + " " + B + " " + C + "\ngroup bob " + D + "\nallow-group alice\n");
  CHECK(p.may_request(A, C));
  CHECK(p.may_deliver(C, B));
  CHECK_FALSE(p.may_request(A, D));
  CHECK_FALSE(p.may_deliver(D, A));
}

TEST_CASE("--allow pairs") {
  Policy p;
  p.allow(A + ":" + B);
  CHECK(p.may_request(A, B));
  CHECK(p.may_deliver(A, B));
  CHECK_FALSE(p.may_request(B, A));
  CHECK_THROWS_AS(p.allow(A + B), keyline::core::FormatError);
  CHECK_THROWS_AS(p.allow("nonsense:" + B), keyline::core::FormatError);
}

TEST_CASE("a bad line is refused with its line number") {
  const std::vector<std::string> bad = {
      "allow " + A,                   // one chip
      "allow " + A + " " + B + " x",  // three
      "permit " + A + " " + B,        // unknown verb
      "allow 1234 " + B,              // not a chip ID
      "group g *",                    // wildcard member
      "allow-group nobody",           // no such group
  };
  for (const auto& line : bad) {
    CAPTURE(line);
    try {
      Policy::parse("# first\n" + line + "\n");
      FAIL("accepted");
    } catch (const keyline::core::FormatError& e) {
      CHECK(e.code() == keyline::kps::errc::BadPolicy);
      if (line != "allow-group nobody") CHECK(std::string(e.what()).find("line 2") != std::string::npos);
    }
  }
}
