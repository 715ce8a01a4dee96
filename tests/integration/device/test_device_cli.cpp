// The keyline-device program itself: make, serve (fleet), boot, status, wipe-flash, corrupt-flash.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>

#include "../../unit/device/device_test_util.h"
#include "keyline/core/device_link.h"
#include "keyline/device/applet.h"
#include "testenv.h"

using namespace keyline;
namespace fs = std::filesystem;

namespace {

std::string program() { return test::binary_dir() + "/bin/keyline-device"; }

struct Result {
  int code = -1;
  std::string out;
};

// Runs the program to completion, capturing stdout (stderr goes to the test log).
Result run(const std::vector<std::string>& args) {
  std::string line = program();
  for (const auto& a : args) line += " '" + a + "'";
  Result r;
  FILE* p = ::popen(line.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// How the child starts: its RLIMIT_NOFILE, and a file for its log lines (else the test's stderr).
struct ChildSetup {
  std::optional<rlimit> nofile;
  std::string log_file;
};

// A background `keyline-device serve`, stopped with SIGTERM.
class Served {
 public:
  explicit Served(const std::vector<std::string>& args, std::size_t devices, const ChildSetup& setup = {}) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    m_pid = ::fork();
    REQUIRE(m_pid >= 0);
    if (m_pid == 0) {
      ::dup2(fds[1], 1);
      ::close(fds[0]);
      ::close(fds[1]);
      if (setup.nofile && ::setrlimit(RLIMIT_NOFILE, &*setup.nofile) != 0) ::_exit(126);
      if (!setup.log_file.empty()) {
        const int log = ::open(setup.log_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (log < 0) ::_exit(126);
        ::dup2(log, 2);
        ::close(log);
      }
      std::vector<std::string> all{program(), "serve"};
      all.insert(all.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    m_out = ::fdopen(fds[0], "r");
    char line[1024];
    while (m_ports.size() < devices && std::fgets(line, sizeof line, m_out)) {
      std::istringstream in(line);
      std::string word, endpoint;
      in >> word >> endpoint;
      if (word == "listening") m_ports.push_back(std::stoi(endpoint.substr(endpoint.rfind(':') + 1)));
    }
  }
  ~Served() {
    if (m_pid > 0) stop();
    if (m_out) std::fclose(m_out);
  }
  int stop() {
    ::kill(m_pid, SIGTERM);
    int status = 0;
    ::waitpid(m_pid, &status, 0);
    m_pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  const std::vector<int>& ports() const { return m_ports; }

 private:
  pid_t m_pid = -1;
  FILE* m_out = nullptr;
  std::vector<int> m_ports;
};

int raw_connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

enum class Atr { answered, closed, silent };

// Sends vpcd "get ATR": answered, closed by the device (a connection over its cap), or nothing in
// time (waiting in the kernel's backlog because the device cannot accept it).
Atr ask_atr(int fd, int timeout_ms) {
  const std::uint8_t ask[] = {0x00, 0x01, 0x04};
  if (::send(fd, ask, sizeof ask, MSG_NOSIGNAL) != sizeof ask) return Atr::closed;
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) <= 0) return Atr::silent;
  std::uint8_t got[7];
  const ssize_t n = ::recv(fd, got, sizeof got, MSG_WAITALL);
  return n == sizeof got && got[2] == 0x3B ? Atr::answered : Atr::closed;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("keyline-device make, serve --fleet, boot, status, wipe-flash, corrupt-flash") {
  test::ScratchDir tmp("cli");
  test::DevicePki pki;
  pki.write_root(tmp.path() / "root.pem");
  const auto fleet = tmp.path() / "fleet";
  const auto made = run({"make", "--dir", fleet.string(), "--count", "3", "--rom-ca", (tmp.path() / "root.pem").string()});
  REQUIRE(made.code == 0);
  const auto dirs = device::list_fleet(fleet);
  REQUIRE(dirs.size() == 3);
  CHECK(made.out.find(device::Chip::load(dirs[2]).chip_id().str()) != std::string::npos);

  // Booting a blank device fails with a reason and a non-zero exit code.
  CHECK(run({"boot", "--dir", dirs[0].string()}).code != 0);
  CHECK(run({"status", "--dir", dirs[0].string()}).out.find("BLANK") != std::string::npos);
  CHECK(run({"serve"}).code == 2);  // neither --dir nor --fleet

  {
    Served served({"--fleet", fleet.string(), "--listen", "127.0.0.1:0", "--quiet"}, 3);
    REQUIRE(served.ports().size() == 3);
    core::DeviceLink link("127.0.0.1", served.ports()[1]);
    link.connect();
    core::CommandApdu sel;
    sel.ins = 0xA4;
    sel.p1 = 0x04;
    sel.data.assign(std::begin(device::kAid), std::end(device::kAid));
    REQUIRE(link.transmit(sel).sw == core::sw::ok);
    const auto chip = device::Chip::load(dirs[1]);
    const auto pkg = pki.package_for(chip.chip_id(), "357805023984942").encode();
    core::CommandApdu st;
    st.cla = 0x80;
    st.ins = 0xE2;
    st.p1 = 0x88;
    st.data = pkg;
    st.extended = true;
    REQUIRE(link.transmit(st).sw == core::sw::ok);
    link.close();
    CHECK(served.stop() == 0);
  }

  const auto boot = run({"boot", "--dir", dirs[1].string()});
  REQUIRE(boot.code == 0);
  CHECK(boot.out.find("imei 357805023984942") != std::string::npos);
  CHECK(boot.out.find("identity_key_sha256 ") != std::string::npos);
  CHECK(run({"status", "--dir", dirs[1].string()}).out.find("flash ok") != std::string::npos);
  REQUIRE(run({"corrupt-flash", "--dir", dirs[1].string()}).code == 0);
  CHECK(run({"boot", "--dir", dirs[1].string()}).code != 0);
  REQUIRE(run({"wipe-flash", "--dir", dirs[1].string()}).code == 0);
  CHECK(run({"boot", "--dir", dirs[1].string()}).code != 0);
}

TEST_CASE("keyline-device serve: the connection cap flags, and the refusal a client sees") {
  test::ScratchDir tmp("cli-caps");
  test::DevicePki pki;
  pki.write_root(tmp.path() / "root.pem");
  const auto fleet = tmp.path() / "fleet";
  REQUIRE(run({"make", "--dir", fleet.string(), "--count", "1", "--rom-ca", (tmp.path() / "root.pem").string()}).code == 0);
  CHECK(run({"serve", "--fleet", fleet.string(), "--max-connections", "0"}).code == 2);
  CHECK(run({"serve", "--fleet", fleet.string(), "--memory-budget-mib", "0"}).code == 2);

  Served served({"--fleet", fleet.string(), "--listen", "127.0.0.1:0", "--quiet", "--max-connections-per-device", "1"},
                1);
  REQUIRE(served.ports().size() == 1);
  core::DeviceLink first("127.0.0.1", served.ports()[0]);
  first.connect();  // power on and ATR answered
  core::DeviceLink second("127.0.0.1", served.ports()[0]);
  int code = 0;
  try {
    second.connect();
  } catch (const core::Error& e) {
    code = e.numeric();
  }
  CHECK(code == 1401);  // closed before any answer
  first.close();
  // The place is free again once the first connection is gone.
  bool connected = false;
  for (int i = 0; i < 20 && !connected; ++i) {
    try {
      second.connect();
      connected = true;
    } catch (const core::Error&) {
      ::usleep(50000);
    }
  }
  CHECK(connected);
  CHECK(served.stop() == 0);
}

// Soft RLIMIT_NOFILE 64, hard 160, the default cap of 1024 connections: without the cap lowered to
// the descriptors there are, a flood exhausts them and the flash writes of a connection that was
// there first fail with EMFILE.
TEST_CASE("keyline-device serve raises the open-file limit and caps connections so flash writes keep descriptors") {
  test::ScratchDir tmp("cli-nofile");
  test::DevicePki pki;
  pki.write_root(tmp.path() / "root.pem");
  const auto fleet = tmp.path() / "fleet";
  REQUIRE(run({"make", "--dir", fleet.string(), "--count", "2", "--rom-ca", (tmp.path() / "root.pem").string()}).code == 0);
  const auto dirs = device::list_fleet(fleet);
  REQUIRE(dirs.size() == 2);

  ChildSetup setup;
  setup.nofile = rlimit{64, 160};
  setup.log_file = (tmp.path() / "serve.log").string();
  Served served({"--fleet", fleet.string(), "--listen", "127.0.0.1:0", "--max-connections-per-device", "1024"}, 2,
                setup);
  REQUIRE(served.ports().size() == 2);
  // 160 descriptors, less those open (stdio, epoll, eventfd, 2 listeners), 8 spare and 2 per
  // device for flash files: about 140, far over what the soft limit of 64 carried.
  const std::string log = read_text(setup.log_file);
  INFO(log);
  const auto at = log.find("connection cap ");
  CHECK(at != std::string::npos);
  const std::size_t cap = at == std::string::npos ? 0 : std::stoul(log.substr(at + 15));
  CHECK(log.find("(configured 1024; open-file limit 160 fits") != std::string::npos);
  CHECK(cap > 120);
  CHECK(cap <= 160 - 7 - 8 - 2 * 2);

  // The station's connection to device 1, there first.
  core::DeviceLink link("127.0.0.1", served.ports()[1]);
  link.connect();

  // The flood to device 0, until the device refuses one or cannot accept one any more.
  std::vector<int> flood;
  Atr last = Atr::answered;
  while (flood.size() < 400 && last == Atr::answered) {
    flood.push_back(raw_connect(served.ports()[0]));
    last = ask_atr(flood.back(), 1000);
  }
  CHECK(last == Atr::closed);  // refused over the cap, not stuck in the backlog
  // All but the last flood connection were answered: with the station's, that is the cap, more
  // than the soft limit of 64 could carry (it was raised).
  CHECK(flood.size() == cap);

  // The station still gets the descriptors its commands need: the staging file, then a flash write.
  core::CommandApdu sel;
  sel.ins = 0xA4;
  sel.p1 = 0x04;
  sel.data.assign(std::begin(device::kAid), std::end(device::kAid));
  REQUIRE(link.transmit(sel).sw == core::sw::ok);
  core::CommandApdu up;
  up.ins = 0xD6;
  up.data.assign(100, 0x42);
  CHECK(link.transmit(up).sw == core::sw::ok);
  const auto chip = device::Chip::load(dirs[1]);
  core::CommandApdu st;
  st.cla = 0x80;
  st.ins = 0xE2;
  st.p1 = 0x88;
  st.data = pki.package_for(chip.chip_id(), "357805023984942").encode();
  st.extended = true;
  CHECK(link.transmit(st).sw == core::sw::ok);
  link.close();
  for (int fd : flood) ::close(fd);
  CHECK(served.stop() == 0);
  CHECK(run({"status", "--dir", dirs[1].string()}).out.find("PERSONALIZED") != std::string::npos);
}
