// Known-answer vector files under tests/vectors/: the first line is a comment naming the source,
// later lines starting with '#' are comments, the rest are whitespace-separated fields.
#pragma once

#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "keyline/core/error.h"

namespace keyline::test {

struct VectorFile {
  std::string source;                           // the first comment line, without "# "
  std::vector<std::vector<std::string>> rows;  // one entry per data line
  std::vector<std::string> lines;              // the data lines verbatim
};

// Reads $KEYLINE_SOURCE_DIR/tests/vectors/<name>; fails the test when the file is missing, empty
// or does not start with its source.
VectorFile read_vectors(const std::string& name);

}  // namespace keyline::test

// Checks that `expr` throws a core::Error with exactly this code (and nothing else, nor nothing).
#define CHECK_THROWS_CODE(expr, error_code)                                              \
  do {                                                                                   \
    bool threw_ = false;                                                                 \
    try {                                                                                \
      (void)(expr);                                                                      \
    } catch (const keyline::core::Error& e_) {                                           \
      threw_ = true;                                                                     \
      INFO("message: " << e_.what());                                                    \
      CHECK(e_.numeric() == static_cast<int>(keyline::core::ErrorCode::error_code));     \
    }                                                                                    \
    CHECK_MESSAGE(threw_, "expected ErrorCode::" #error_code " from: " #expr);          \
  } while (false)
