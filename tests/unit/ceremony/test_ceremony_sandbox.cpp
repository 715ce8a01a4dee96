// forbid_network in a child process (the filter cannot be removed again): inet, inet6 and packet
// sockets fail with EPERM, io_uring is refused, a local AF_UNIX socket still works.
#include <doctest/doctest.h>

#include <cerrno>

#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keyline/ceremony/sandbox.h"

namespace {

// 0 when socket(domain, type, 0) fails with EPERM; 1 when it succeeds; 2 on another error.
int try_socket(int domain, int type) {
  const int fd = ::socket(domain, type, 0);
  if (fd >= 0) {
    ::close(fd);
    return 1;
  }
  return errno == EPERM ? 0 : 2;
}

// Runs `body` in a forked child; returns its exit status (or -1 when it died of a signal).
template <typename Body>
int in_child(Body body) {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(body());
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE("without the filter an inet socket opens (the check below is not vacuous)") {
  CHECK(try_socket(AF_INET, SOCK_STREAM) == 1);
  CHECK(try_socket(AF_INET6, SOCK_DGRAM) != 0);
}

TEST_CASE("with the filter every network socket fails with EPERM, AF_UNIX still works") {
  const int status = in_child([] {
    keyline::ceremony::forbid_network();
    int bad = 0;
    bad |= try_socket(AF_INET, SOCK_STREAM) != 0 ? 1 : 0;
    bad |= try_socket(AF_INET, SOCK_DGRAM) != 0 ? 2 : 0;
    bad |= try_socket(AF_INET6, SOCK_STREAM) != 0 ? 4 : 0;
    bad |= try_socket(AF_PACKET, SOCK_RAW) != 0 ? 8 : 0;
    bad |= try_socket(AF_NETLINK, SOCK_RAW) != 0 ? 16 : 0;
    bad |= try_socket(AF_UNIX, SOCK_STREAM) != 1 ? 32 : 0;
    errno = 0;
    const long ring = ::syscall(SYS_io_uring_setup, 1, nullptr);
    bad |= (ring == -1 && errno == EPERM) ? 0 : 64;
    return bad;
  });
  CHECK(status == 0);
}
