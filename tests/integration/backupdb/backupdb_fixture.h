// What every fixture of the backupdb integration tests shares (backupdb_test.cpp and tlog_fixture.h):
// files, a shell, keys, the cluster-wide role's password, and the server program started as a subprocess.
#pragma once

#include <botan/auto_rng.h>
#include <botan/ec_group.h>
#include <botan/ecdsa.h>
#include <botan/x509cert.h>

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "keyline/core/cert_profile.h"

namespace {

constexpr const char* kRolePassword = "kl-test-role-pw";

void write_file(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string sh(const std::string& cmd, int* rc = nullptr) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = pclose(p);
  if (rc) *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

std::unique_ptr<Botan::ECDSA_PrivateKey> new_key(Botan::RandomNumberGenerator& rng) {
  return std::make_unique<Botan::ECDSA_PrivateKey>(rng, Botan::EC_Group("secp256r1"));
}

std::string dbname_of(const std::string& conninfo) {
  const auto p = conninfo.find("dbname=");
  const auto e = conninfo.find(' ', p);
  return conninfo.substr(p + 7, e == std::string::npos ? std::string::npos : e - p - 7);
}

// The manufacturer's root and Device CA that records chain to, in a temporary directory (made from the
// mkdtemp template `dir_template`) that goes with the fixture.
struct DevicePkiBase {
  std::string dir;
  Botan::AutoSeeded_RNG rng;
  std::unique_ptr<Botan::ECDSA_PrivateKey> root_key, device_ca_key;
  std::unique_ptr<Botan::X509_Certificate> root, device_ca;

  explicit DevicePkiBase(std::string dir_template) {
    dir = mkdtemp(dir_template.data());
    root_key = new_key(rng);
    root = std::make_unique<Botan::X509_Certificate>(
        keyline::core::make_root_certificate(*root_key, "Test Root", "keyline test", rng));
    device_ca_key = new_key(rng);
    device_ca = std::make_unique<Botan::X509_Certificate>(keyline::core::make_ca_certificate(
        *root, *root_key, *device_ca_key, "Test Device CA", "keyline test", 0, rng));
  }
  ~DevicePkiBase() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  DevicePkiBase(const DevicePkiBase&) = delete;
  DevicePkiBase& operator=(const DevicePkiBase&) = delete;
};

// Forks and runs args[0] (a path) with `args`, its stdout and stderr into the file `out`; the child's pid.
pid_t spawn(std::vector<std::string> args, const std::string& out) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (!freopen(out.c_str(), "w", stdout) || !freopen(out.c_str(), "a", stderr)) _exit(127);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

}  // namespace
