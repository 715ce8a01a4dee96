// GENERATE KEY's answer from untrusted bytes (docs/protocol.md section 9): parse_signed_statement,
// then parse_statement on the statement inside. Whatever parses must encode to the same bytes.
#include <cstdint>
#include <cstdlib>

#include "keyline/core/chip_identity.h"
#include "keyline/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keyline::core;
  try {
    const auto signed_statement = chip::parse_signed_statement(data, size);
    if (chip::encode_signed_statement(signed_statement) != Bytes(data, data + size)) std::abort();
    const auto& st = signed_statement.statement;
    const auto s = chip::parse_statement(st.data(), st.size());
    if (chip::encode_statement(s) != st) std::abort();
  } catch (const FormatError&) {
  }
  return 0;
}
