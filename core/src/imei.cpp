#include "keyline/core/imei.h"

#include "keyline/core/error.h"

namespace keyline::core {

namespace {

constexpr std::size_t kImeiDigits = 15;
constexpr std::size_t kTacDigits = 8;
constexpr std::size_t kSnrDigits = 6;
constexpr std::uint32_t kSnrLimit = 1000000;

bool all_digits(std::string_view s) noexcept {
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// 3GPP TS 23.003 Annex B: starting from the rightmost of the 14 digits, every second digit is
// doubled (so D14, D12, ... D2 when counting from the left at D1), the digits of all products and
// of the undoubled digits are summed, and the check digit brings the sum to a multiple of ten.
// The caller guarantees 14 decimal digits.
char luhn_digit(std::string_view fourteen) noexcept {
  int sum = 0;
  for (std::size_t i = 0; i < fourteen.size(); ++i) {
    int d = fourteen[i] - '0';
    if (i % 2 == 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return static_cast<char>('0' + (10 - sum % 10) % 10);
}

}  // namespace

char Imei::check_digit(std::string_view fourteen_digits) {
  if (fourteen_digits.size() != kImeiDigits - 1 || !all_digits(fourteen_digits))
    throw FormatError(ErrorCode::BadImei, "IMEI check digit needs exactly 14 decimal digits");
  return luhn_digit(fourteen_digits);
}

bool Imei::is_valid(std::string_view text) noexcept {
  if (text.size() != kImeiDigits || !all_digits(text)) return false;
  return luhn_digit(text.substr(0, kImeiDigits - 1)) == text[kImeiDigits - 1];
}

Imei Imei::parse(std::string_view text) {
  if (text.size() == kImeiDigits + 1 && all_digits(text))
    throw FormatError(ErrorCode::BadImei, "16 digits is an IMEISV, not an IMEI");
  if (text.size() != kImeiDigits)
    throw FormatError(ErrorCode::BadImei, "IMEI must be 15 digits, got " + std::to_string(text.size()) + " characters");
  if (!all_digits(text)) throw FormatError(ErrorCode::BadImei, "IMEI has a non-digit character");
  if (luhn_digit(text.substr(0, kImeiDigits - 1)) != text[kImeiDigits - 1])
    throw FormatError(ErrorCode::BadImei, "IMEI check digit is wrong");
  return Imei(std::string(text));
}

Imei Imei::from_tac_serial(std::string_view tac, std::uint32_t serial) {
  if (tac.size() != kTacDigits || !all_digits(tac))
    throw FormatError(ErrorCode::BadImei, "TAC must be 8 decimal digits");
  if (serial >= kSnrLimit) throw FormatError(ErrorCode::BadImei, "IMEI serial number must be below 1000000");
  std::string snr = std::to_string(serial);
  std::string digits(tac);
  digits.append(kSnrDigits - snr.size(), '0');
  digits += snr;
  digits.push_back(luhn_digit(digits));
  return Imei(std::move(digits));
}

std::uint32_t Imei::serial() const {
  std::uint32_t v = 0;
  for (std::size_t i = kTacDigits; i < kTacDigits + kSnrDigits; ++i)
    v = v * 10 + static_cast<std::uint32_t>(m_digits[i] - '0');
  return v;
}

}  // namespace keyline::core
