#include <doctest/doctest.h>

#include "keyline/core/imei.h"
#include "vector_file.h"

using namespace keyline::core;

TEST_CASE("IMEI known answers: valid, one digit changed, IMEISV") {
  const auto vf = keyline::test::read_vectors("imei.txt");
  CHECK(vf.source.find("TS 23.003") != std::string::npos);
  int valid = 0, invalid = 0, imeisv = 0;
  for (const auto& row : vf.rows) {
    REQUIRE(row.size() >= 2);
    const std::string& kind = row[0];
    const std::string& digits = row[1];
    INFO(kind << " " << digits);
    if (kind == "valid") {
      CHECK(Imei::is_valid(digits));
      const Imei i = Imei::parse(digits);
      CHECK(i.str() == digits);
      CHECK(Imei::check_digit(digits.substr(0, 14)) == digits[14]);
      CHECK(Imei::from_tac_serial(i.tac(), i.serial()) == i);
      ++valid;
    } else if (kind == "invalid") {
      CHECK_FALSE(Imei::is_valid(digits));
      CHECK_THROWS_CODE(Imei::parse(digits), BadImei);
      ++invalid;
    } else if (kind == "imeisv") {
      CHECK(digits.size() == 16);
      CHECK_FALSE(Imei::is_valid(digits));
      CHECK_THROWS_CODE(Imei::parse(digits), BadImei);
      ++imeisv;
    } else {
      FAIL("unknown vector kind " << kind);
    }
  }
  CHECK(valid == 3);
  CHECK(invalid >= 3);
  CHECK(imeisv >= 1);
}

TEST_CASE("IMEI TS 23.003 Annex B worked example, field by field") {
  CHECK(Imei::check_digit("26053179311383") == '7');
  const Imei i = Imei::parse("260531793113837");
  CHECK(i.tac() == "26053179");
  CHECK(i.serial() == 311383);
  CHECK(Imei::from_tac_serial("26053179", 311383).str() == "260531793113837");
}

TEST_CASE("IMEI: every single-digit change of a valid IMEI is caught") {
  // Luhn detects every single-digit error; check the whole neighbourhood, not just a few samples.
  const std::string base = "357805023984942";
  for (std::size_t pos = 0; pos < base.size(); ++pos) {
    for (char d = '0'; d <= '9'; ++d) {
      if (d == base[pos]) continue;
      std::string s = base;
      s[pos] = d;
      CHECK_FALSE(Imei::is_valid(s));
    }
  }
}

TEST_CASE("IMEI from TAC and serial: zero padding and limits") {
  const Imei first = Imei::from_tac_serial("35780502", 0);
  CHECK(first.str().substr(0, 14) == "35780502000000");
  CHECK(Imei::is_valid(first.str()));
  CHECK(first.serial() == 0);
  const Imei last = Imei::from_tac_serial("35780502", 999999);
  CHECK(last.serial() == 999999);
  CHECK(Imei::is_valid(last.str()));
  CHECK(first != last);
  CHECK_THROWS_CODE(Imei::from_tac_serial("35780502", 1000000), BadImei);
  CHECK_THROWS_CODE(Imei::from_tac_serial("3578050", 1), BadImei);
  CHECK_THROWS_CODE(Imei::from_tac_serial("357805021", 1), BadImei);
  CHECK_THROWS_CODE(Imei::from_tac_serial("3578050A", 1), BadImei);
}

TEST_CASE("IMEI: non-digits and wrong lengths are BadImei") {
  for (const char* bad : {"", "26053179311383", "2605317931138370", "26053179311383X", "26053179311383 ",
                          " 26053179311383", "2605317931-3837", "+26053179311383", "２60531793113837"}) {
    INFO(std::string(bad));
    CHECK_FALSE(Imei::is_valid(bad));
    CHECK_THROWS_CODE(Imei::parse(bad), BadImei);
  }
  CHECK_THROWS_CODE(Imei::parse(std::string("26053179311383\0", 15)), BadImei);
  CHECK_THROWS_CODE(Imei::check_digit("2605317931138"), BadImei);
  CHECK_THROWS_CODE(Imei::check_digit("2605317931138A"), BadImei);
}
