#include "keyline/ceremony/sandbox.h"

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include "keyline/ceremony/errors.h"

namespace keyline::ceremony {

namespace {

#if defined(__x86_64__)
constexpr unsigned kArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr unsigned kArch = AUDIT_ARCH_AARCH64;
#else
#error "forbid_network: add the audit arch of this platform"
#endif
constexpr unsigned kX32Bit = 0x40000000;  // x32 syscall numbers on x86-64 (a second path to socket)

}  // namespace

void forbid_network() {
  // Jump offsets count from the next statement (Documentation/networking/filter.rst).
  sock_filter program[] = {
      // Another ABI (a foreign arch, x32 numbers) would bypass the checks below: kill the process.
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, kX32Bit, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      // io_uring can open sockets without the socket syscall (IORING_OP_SOCKET): refused outright.
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_io_uring_setup, 4, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socket, 0, 2),
      // socket(domain, ...): only AF_UNIX (local IPC) passes; args[0] low word holds the domain.
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
  };
  sock_fprog prog{static_cast<unsigned short>(sizeof program / sizeof program[0]), program};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    throw core::Error(errc::Sandbox, std::string("PR_SET_NO_NEW_PRIVS: ") + std::strerror(errno));
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0)
    throw core::Error(errc::Sandbox, std::string("seccomp filter: ") + std::strerror(errno));
}

}  // namespace keyline::ceremony
