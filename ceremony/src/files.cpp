#include "files.h"

#include <cerrno>
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keyline/ceremony/errors.h"

namespace keyline::ceremony::files {

namespace {
[[noreturn]] void io_fail(const std::string& what, const std::string& path) {
  throw core::IoError(core::ErrorCode::Io, what + " " + path + ": " + std::strerror(errno));
}
// Whoever may rename an ancestor may swap the whole directory: every ancestor must belong to root or
// to us, and not be writable by others unless sticky (as /tmp is).
void check_parents(const std::string& dir) {
  char* real = ::realpath(dir.c_str(), nullptr);
  if (!real) io_fail("cannot resolve", dir);
  std::string path(real);
  std::free(real);
  while (path.size() > 1) {
    path = path.substr(0, std::max<std::size_t>(1, path.rfind('/')));
    struct stat st{};
    if (::stat(path.c_str(), &st) != 0) io_fail("cannot inspect", path);
    if (st.st_uid != 0 && st.st_uid != ::geteuid())
      throw core::Error(errc::DirUnsafe, "ceremony directory " + dir + ": " + path + " belongs to another user");
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))
      throw core::Error(errc::DirUnsafe, "ceremony directory " + dir + ": " + path + " is writable by others");
  }
}

}  // namespace

void check_dir(const std::string& dir, bool create) {
  if (create && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) io_fail("cannot create", dir);
  struct stat st{};
  if (::lstat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) throw core::Error(errc::RootMissing, "no ceremony directory " + dir + ": run init-root first");
    io_fail("cannot inspect", dir);
  }
  if (!S_ISDIR(st.st_mode)) throw core::Error(errc::DirUnsafe, dir + " is not a directory (or is a symlink)");
  if (st.st_uid != ::geteuid()) throw core::Error(errc::DirUnsafe, dir + " belongs to another user");
  if (st.st_mode & (S_IWGRP | S_IWOTH)) throw core::Error(errc::DirUnsafe, dir + " is writable by group or others");
  check_parents(dir);
}

DirLock::DirLock(const std::string& dir) {
  const std::string path = dir + "/.lock";
  m_fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (m_fd < 0) io_fail("cannot open", path);
  if (::flock(m_fd, LOCK_EX) != 0) {
    ::close(m_fd);
    io_fail("cannot lock", path);
  }
}

DirLock::~DirLock() {
  if (m_fd >= 0) ::close(m_fd);
}

bool exists(const std::string& path) {
  struct stat st{};
  return ::lstat(path.c_str(), &st) == 0;
}

void write_new(const std::string& path, const std::string& content, unsigned mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) io_fail("cannot create", path);
  const ssize_t w = ::write(fd, content.data(), content.size());
  const bool ok = w == static_cast<ssize_t>(content.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) io_fail("cannot write", path);
}

core::Bytes read_all(const std::string& path, std::size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) io_fail("cannot read", path);
  core::Bytes out;
  std::uint8_t buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) {
    out.insert(out.end(), buf, buf + n);
    if (out.size() > max_bytes) {
      ::close(fd);
      throw core::FormatError(core::ErrorCode::BadCertificate,
                              path + " is larger than " + std::to_string(max_bytes) + " bytes");
    }
  }
  const int err = errno;
  ::close(fd);
  if (n < 0) {
    errno = err;
    io_fail("cannot read", path);
  }
  return out;
}

}  // namespace keyline::ceremony::files
