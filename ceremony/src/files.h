// The ceremony directory: ours alone, one ceremony at a time, files created once and never overwritten.
#pragma once

#include <string>

#include "keyline/core/bytes.h"

namespace keyline::ceremony::files {

// Creates `dir` (0700) when `create`, then refuses (errc::DirUnsafe) a directory that is a symlink, not
// ours, or writable by group or others: whoever could write there could swap root.pem or the log.
void check_dir(const std::string& dir, bool create);

// An exclusive flock on dir/.lock, held until destruction: two ceremonies never interleave log lines.
class DirLock {
 public:
  explicit DirLock(const std::string& dir);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  int m_fd = -1;
};

bool exists(const std::string& path);
// Writes a new file (O_EXCL, O_NOFOLLOW) and fsyncs it. Throws IoError when it exists or cannot be written.
void write_new(const std::string& path, const std::string& content, unsigned mode);
// The whole file (O_NOFOLLOW). Throws IoError, and FormatError(BadCertificate) past max_bytes.
core::Bytes read_all(const std::string& path, std::size_t max_bytes);

}  // namespace keyline::ceremony::files
