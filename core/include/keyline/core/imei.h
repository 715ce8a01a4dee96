// IMEI per 3GPP TS 23.003 section 6.2.1: TAC (8 digits) + SNR (6 digits) + check digit (Luhn,
// TS 23.003 Annex B). IMEISV (16 digits) is not an IMEI and is rejected.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace keyline::core {

class Imei {
 public:
  // Throws FormatError(BadImei): not 15 digits, non-digit, wrong check digit.
  static Imei parse(std::string_view text);
  // tac: 8 digits; serial < 1,000,000. Computes the check digit.
  static Imei from_tac_serial(std::string_view tac, std::uint32_t serial);
  static bool is_valid(std::string_view text) noexcept;
  // Luhn check digit over the 14 digits TAC+SNR.
  static char check_digit(std::string_view fourteen_digits);

  const std::string& str() const noexcept { return m_digits; }
  std::string tac() const { return m_digits.substr(0, 8); }
  std::uint32_t serial() const;  // SNR as a number
  bool operator==(const Imei& o) const noexcept { return m_digits == o.m_digits; }
  bool operator!=(const Imei& o) const noexcept { return m_digits != o.m_digits; }

 private:
  explicit Imei(std::string digits) : m_digits(std::move(digits)) {}
  std::string m_digits;
};

}  // namespace keyline::core
