#include "pcsc_cards.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>

namespace keyline::test {

std::string pcsc_env(const char* name) {
  const char* v = std::getenv(name);
  REQUIRE_MESSAGE(v != nullptr, name << " is not set: run this test through its wrapper script");
  return v;
}

std::vector<Reader> test_readers(std::size_t expected) {
  std::ifstream in(pcsc_env("KEYLINE_PCSC_DIR") + "/readers");
  std::vector<Reader> out;
  for (std::string line; std::getline(in, line);) {
    const auto sp = line.rfind(' ');
    out.push_back({line.substr(0, sp), std::stoi(line.substr(sp + 1))});
  }
  REQUIRE(out.size() == expected);
  return out;
}

MadeDevice make_device(const std::string& name, const std::string& rom_ca) {
  const std::string dir = pcsc_env("KEYLINE_PCSC_WORK") + "/" + name;
  const std::string cmd = "rm -rf '" + dir + "' && '" + pcsc_env("KEYLINE_DEVICE_BIN") + "' make --dir '" + dir +
                          "' --rom-ca '" + rom_ca + "' 2>'" + dir + ".make.err'";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[512];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  REQUIRE_MESSAGE(::pclose(p) == 0, "keyline-device make failed: see " << dir << ".make.err");
  return {dir, out.substr(0, out.find(' '))};
}

core::pcsc::ReaderState wait_for_card(core::pcsc::Context& ctx, const std::string& reader, bool present,
                                      std::chrono::milliseconds limit) {
  const std::vector<std::string> one{reader};
  std::vector<core::pcsc::ReaderState> s = ctx.states(one);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (s[0].present != present && std::chrono::steady_clock::now() < deadline)
    s = ctx.wait(one, s, std::chrono::milliseconds(500));
  REQUIRE_MESSAGE(s[0].present == present, "reader " << reader << (present ? " got no card" : " kept its card"));
  return s[0];
}

Card::Card(const MadeDevice& device, const Reader& reader, std::vector<std::string> extra, bool settle) {
  std::unique_ptr<core::pcsc::Context> ctx;
  if (settle) {
    ctx = std::make_unique<core::pcsc::Context>();
    wait_for_card(*ctx, reader.name, false);
  }
  const std::string bin = pcsc_env("KEYLINE_DEVICE_BIN");
  m_pid = ::fork();
  REQUIRE(m_pid >= 0);
  if (m_pid == 0) {
    const std::string log = device.dir + ".log";
    if (!std::freopen(log.c_str(), "a", stderr) || !std::freopen(log.c_str(), "a", stdout)) ::_exit(126);
    std::vector<std::string> all{bin, "serve", "--dir", device.dir, "--vpcd", "127.0.0.1:" + std::to_string(reader.port)};
    all.insert(all.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  if (ctx) wait_for_card(*ctx, reader.name, true);  // pcscd polls the vpcd reader
}

void Card::pull() {
  if (m_pid <= 0) return;
  ::kill(m_pid, SIGKILL);
  ::waitpid(m_pid, nullptr, 0);
  m_pid = -1;
}

}  // namespace keyline::test
