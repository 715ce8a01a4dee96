// The ceremony runs offline: a seccomp filter (Linux seccomp(2), SECCOMP_MODE_FILTER) makes every
// socket other than AF_UNIX fail with EPERM for the rest of the process, so no code path - ours, Botan's,
// a PKCS#11 module's - can reach a network, whatever it was linked with.
#pragma once

namespace keyline::ceremony {

// Installs the filter (PR_SET_NO_NEW_PRIVS first, as seccomp(2) requires for an unprivileged caller).
// Irreversible. Throws core::Error(errc::Sandbox) when the kernel refuses.
void forbid_network();

}  // namespace keyline::ceremony
