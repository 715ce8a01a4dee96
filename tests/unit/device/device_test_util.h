// Scratch directories and a ready device for the device tests.
#pragma once

#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>

#include "device_pki.h"
#include "scratch_dir.h"
#include "keyline/core/bytes.h"
#include "keyline/device/chip.h"

// GCC says ASan with __SANITIZE_ADDRESS__, clang 14 only through __has_feature (the sanitizer build is clang's).
#if defined(__SANITIZE_ADDRESS__)
#define KEYLINE_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KEYLINE_TEST_ASAN 1
#endif
#endif
#if defined(KEYLINE_TEST_ASAN)
// ASan's allocator replaces malloc, whose own statistics then say nothing (the sanitizer build).
extern "C" std::size_t __sanitizer_get_current_allocated_bytes();
#endif

namespace keyline::test {

// Bytes the allocator has handed out and not taken back, every thread together: what the process
// really holds on the heap (a secure_vector's big buffers come from calloc; thread stacks are not in it).
inline std::size_t heap_in_use() {
#if defined(KEYLINE_TEST_ASAN)
  return __sanitizer_get_current_allocated_bytes();
#else
  const auto m = ::mallinfo2();
  return m.uordblks + m.hblkhd;
#endif
}

// Makes one device under dir/name with the PKI's root in ROM.
inline std::filesystem::path make_test_device(const DevicePki& pki, const std::filesystem::path& dir,
                                              const std::string& name = "dev") {
  pki.write_root(dir / "root.pem");
  std::set<std::string> taken;
  device::make_device(dir / name, dir / "root.pem", taken);
  return dir / name;
}

inline std::string read_file_bytes_hex(const std::filesystem::path& path) {
  return core::to_hex(*device::read_bytes(path));
}

}  // namespace keyline::test
