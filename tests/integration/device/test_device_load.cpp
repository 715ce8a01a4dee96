// The device server under load (issue 12): out of file descriptors, bursts of connections, the
// connection caps and the memory budget. Real sockets, a Server in this process.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>
#include <vector>

#include "../../unit/device/device_test_util.h"
#include "keyline/core/device_link.h"
#include "keyline/device/log.h"
#include "keyline/device/server.h"

using namespace keyline;
namespace fs = std::filesystem;
using std::chrono::milliseconds;

namespace {

device::ServerOptions quiet_options() {
  device::set_quiet(true);
  device::ServerOptions o;
  o.idle_timeout = milliseconds(5000);
  return o;
}

// Not make_fleet: its one sync() for the whole fab run waits for every dirty page of the machine.
std::vector<fs::path> make_devices(const test::DevicePki& pki, const fs::path& dir, std::size_t n) {
  std::vector<fs::path> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back(test::make_test_device(pki, dir, "dev-" + std::to_string(i)));
  return out;
}

void connect_to(int fd, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
}

int raw_socket() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  return fd;
}

int raw_connect(int port) {
  const int fd = raw_socket();
  connect_to(fd, port);
  return fd;
}

void send_bytes(int fd, const std::vector<std::uint8_t>& b) {
  REQUIRE(::send(fd, b.data(), b.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(b.size()));
}

// Sends vpcd "get ATR" and waits for the 7-byte answer frame; false when none comes in time.
bool atr_answered(int fd, int timeout_ms) {
  const std::uint8_t ask[] = {0x00, 0x01, 0x04};
  if (::send(fd, ask, sizeof ask, MSG_NOSIGNAL) != sizeof ask) return false;
  std::uint8_t got[7];
  std::size_t have = 0;
  const auto end = std::chrono::steady_clock::now() + milliseconds(timeout_ms);
  while (have < sizeof got) {
    const auto left = std::chrono::duration_cast<milliseconds>(end - std::chrono::steady_clock::now()).count();
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
    const ssize_t n = ::recv(fd, got + have, sizeof got - have, 0);
    if (n <= 0) return false;
    have += static_cast<std::size_t>(n);
  }
  return got[0] == 0x00 && got[1] == 0x05 && got[2] == 0x3B;
}

// True when the peer closes the connection within the timeout (bytes before the close are skipped).
bool closed_by_peer(int fd, int timeout_ms) {
  const auto end = std::chrono::steady_clock::now() + milliseconds(timeout_ms);
  for (;;) {
    const auto left = std::chrono::duration_cast<milliseconds>(end - std::chrono::steady_clock::now()).count();
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
    std::uint8_t b[256];
    const ssize_t n = ::recv(fd, b, sizeof b, 0);
    if (n <= 0) return true;
  }
}

std::size_t thread_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/task")) ++n;
  return n;
}

double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

template <class Pred>
bool eventually(Pred pred, int timeout_ms) {
  const auto end = std::chrono::steady_clock::now() + milliseconds(timeout_ms);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return true;
}

// Lowers RLIMIT_NOFILE for the test and puts the old limit back on every path.
struct NofileLimit {
  rlimit old{};
  explicit NofileLimit(rlim_t soft) {
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
    rlimit low = old;
    low.rlim_cur = soft;
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
  }
  ~NofileLimit() { ::setrlimit(RLIMIT_NOFILE, &old); }
};

std::size_t open_fd_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

int highest_open_fd() {
  int high = 0;
  for (const auto& e : fs::directory_iterator("/proc/self/fd")) high = std::max(high, std::stoi(e.path().filename()));
  return high;
}

std::vector<std::uint8_t> frame_of(const core::CommandApdu& c) {
  const auto apdu = core::encode_command(c);
  std::vector<std::uint8_t> f{static_cast<std::uint8_t>(apdu.size() >> 8), static_cast<std::uint8_t>(apdu.size())};
  f.insert(f.end(), apdu.begin(), apdu.end());
  return f;
}

std::vector<std::uint8_t> select_frame() {
  core::CommandApdu c;
  c.ins = 0xA4;
  c.p1 = 0x04;
  c.data.assign(std::begin(device::kAid), std::end(device::kAid));
  return frame_of(c);
}

// Sends one frame and reads the answer frame; its status word, or 0 when the link closed or nothing came.
unsigned answer_sw(int fd, const std::vector<std::uint8_t>& frame) {
  if (::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(frame.size())) return 0;
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 5000) <= 0) return 0;
  std::uint8_t head[2];
  if (::recv(fd, head, 2, MSG_WAITALL) != 2) return 0;
  std::vector<std::uint8_t> body((head[0] << 8) | head[1]);
  if (body.size() < 2 || ::recv(fd, body.data(), body.size(), MSG_WAITALL) != static_cast<ssize_t>(body.size()))
    return 0;
  return (body[body.size() - 2] << 8) | body.back();
}

}  // namespace

TEST_CASE("out of file descriptors: the acceptor backs off instead of spinning, and the fleet recovers") {
  test::ScratchDir tmp("emfile");
  test::DevicePki pki;
  const auto dirs = make_devices(pki, tmp.path(), 2);
  device::Server server(dirs, quiet_options());
  server.start();
  const auto ports = server.ports();

  std::vector<int> filler;
  int client_a = -1, client_b = -1;
  {
    const NofileLimit limit(static_cast<rlim_t>(highest_open_fd() + 40));
    for (;;) {
      const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (fd < 0) break;
      filler.push_back(fd);
    }
    REQUIRE(errno == EMFILE);
    REQUIRE(filler.size() >= 2);
    // Two descriptors for the clients; none is left for the server to accept them with.
    ::close(filler.back());
    filler.pop_back();
    ::close(filler.back());
    filler.pop_back();
    // Both sockets before either connects: an accept must not slip into the second free slot.
    client_a = raw_socket();
    client_b = raw_socket();
    connect_to(client_a, ports[0]);
    connect_to(client_b, ports[1]);
    REQUIRE(eventually([&] { return server.stats().accept_fd_exhausted > 0; }, 2000));

    // Both connections wait in the backlog; the acceptor must not burn a core meanwhile.
    const double cpu0 = cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(milliseconds(1000));
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double cpu = cpu_seconds() - cpu0;
    CHECK(cpu < 0.2 * wall);
    // A backoff of 100 ms retries about ten times a second, not millions.
    CHECK(server.stats().accept_fd_exhausted < 100);
    CHECK_FALSE(atr_answered(client_a, 200));

    for (int fd : filler) ::close(fd);
    filler.clear();
  }
  // Descriptors free again: every device accepts by itself, the waiting clients first.
  CHECK(atr_answered(client_a, 3000));
  CHECK(atr_answered(client_b, 3000));
  core::DeviceLink link("127.0.0.1", ports[1]);
  link.connect();
  CHECK(link.atr().size() == 5);
  ::close(client_a);
  ::close(client_b);
}

TEST_CASE("the connection cap leaves descriptors for the listeners and the flash files") {
  test::ScratchDir tmp("fdcap");
  test::DevicePki pki;
  const auto dirs = make_devices(pki, tmp.path(), 3);
  // The server counts the descriptors open once its 3 listeners, epoll and eventfd are (5 more),
  // keeps 8 spare and 2 per device for the files a running command opens.
  const std::size_t before = open_fd_count();
  {
    const rlim_t soft = static_cast<rlim_t>(before + 5 + 8 + 200);
    const NofileLimit limit(soft);
    const device::Server fits(dirs, quiet_options());
    CHECK(fits.connection_cap() == 200 - 2 * 3);
    auto options = quiet_options();
    options.max_connections = 50;  // a configured cap below what fits stays
    CHECK(device::Server(dirs, options).connection_cap() == 50);
  }
  {
    // Room for 7: fewer connections than devices, each of which may run a command at once.
    const NofileLimit limit(static_cast<rlim_t>(before + 5 + 8 + 7));
    CHECK(device::Server(dirs, quiet_options()).connection_cap() == 2);
  }
  {
    // No room for a connection: a configuration error, not a server that refuses everyone.
    const NofileLimit limit(static_cast<rlim_t>(before + 5 + 8));
    CHECK_THROWS_AS(device::Server(dirs, quiet_options()), core::ConfigError);
  }
}

TEST_CASE("a burst of 300 connections: afterwards the threads go back down to the pool") {
  test::ScratchDir tmp("threads");
  test::DevicePki pki;
  const auto dirs = make_devices(pki, tmp.path(), 3);
  auto options = quiet_options();
  options.max_connections_per_device = 100;
  options.idle_workers = 4;
  options.worker_idle = milliseconds(300);
  device::Server server(dirs, options);
  server.start();
  const auto ports = server.ports();
  const std::size_t baseline = thread_count();

  std::vector<int> clients;
  for (int i = 0; i < 300; ++i) clients.push_back(raw_connect(ports[static_cast<std::size_t>(i) % ports.size()]));
  std::size_t answered = 0;
  for (int fd : clients) answered += atr_answered(fd, 3000) ? 1 : 0;
  CHECK(answered == 300);
  // One thread per open connection: the burst did raise the count (the check below is not vacuous).
  CHECK(thread_count() >= baseline + 300);
  for (int fd : clients) ::close(fd);

  CHECK(eventually([&] { return server.stats().connections == 0; }, 3000));
  CHECK(eventually([&] { return thread_count() <= baseline + options.idle_workers; }, 5000));
  CHECK(server.stats().workers <= options.idle_workers);
  // The pool still serves.
  const int again = raw_connect(ports[0]);
  CHECK(atr_answered(again, 2000));
  ::close(again);
}

TEST_CASE("connection caps: over the per-device or the total cap a connection is closed at once") {
  test::ScratchDir tmp("caps");
  test::DevicePki pki;
  const auto dirs = make_devices(pki, tmp.path(), 3);
  auto options = quiet_options();
  options.max_connections_per_device = 2;
  options.max_connections = 4;
  device::Server server(dirs, options);
  server.start();
  const auto ports = server.ports();

  const int a1 = raw_connect(ports[0]), a2 = raw_connect(ports[0]);
  CHECK(atr_answered(a1, 2000));
  CHECK(atr_answered(a2, 2000));
  const int a3 = raw_connect(ports[0]);  // third to device 0
  CHECK(closed_by_peer(a3, 2000));
  const int b1 = raw_connect(ports[1]), b2 = raw_connect(ports[1]);
  CHECK(atr_answered(b1, 2000));
  CHECK(atr_answered(b2, 2000));
  const int c1 = raw_connect(ports[2]);  // fifth in total
  CHECK(closed_by_peer(c1, 2000));
  CHECK(server.stats().refused_connections == 2);
  CHECK(server.stats().connections == 4);
  // The open ones still work, and a freed place is taken again.
  CHECK(atr_answered(a1, 2000));
  ::close(b2);
  CHECK(eventually([&] { return server.stats().connections == 3; }, 2000));
  const int c2 = raw_connect(ports[2]);
  CHECK(atr_answered(c2, 2000));
  for (int fd : {a1, a2, a3, b1, c1, c2}) ::close(fd);
}

TEST_CASE("memory budget: partial large frames and gathered data of all connections stay under it") {
  test::ScratchDir tmp("budget");
  test::DevicePki pki;
  const auto dirs = make_devices(pki, tmp.path(), 2);
  auto options = quiet_options();
  options.max_connections_per_device = 32;
  options.memory_budget = 256 * 1024;
  device::Server server(dirs, options);
  server.start();
  const auto ports = server.ports();

  // Twelve connections each announce a 65000-byte frame and send 30000 bytes of it: 360 kB in all.
  std::vector<int> clients;
  std::vector<std::uint8_t> partial{0xFD, 0xE8};  // 65000
  partial.resize(2 + 30000, 0x00);
  for (int i = 0; i < 12; ++i) {
    clients.push_back(raw_connect(ports[static_cast<std::size_t>(i) % 2]));
    send_bytes(clients.back(), partial);
  }
  // Settled once every connection's bytes are either held or its connection closed.
  const auto settled = [&] {
    const auto st = server.stats();
    return st.budget_closed <= 12 && st.held_bytes == (12 - st.budget_closed) * partial.size();
  };
  CHECK(eventually(settled, 5000));
  std::size_t closed = 0, open = 0;
  for (int fd : clients) {
    if (closed_by_peer(fd, 100))
      ++closed;
    else
      ++open;
  }
  const auto st = server.stats();
  CHECK(closed >= 4);  // 256 KiB holds eight such partial frames, not twelve
  CHECK(open >= 4);
  CHECK(st.budget_closed == closed);
  CHECK(st.peak_held_bytes <= options.memory_budget);
  CHECK(st.held_bytes == open * partial.size());

  // Gathered command data counts too: chained parts (CLA 10) that never end, once the applet is
  // selected (before it they are refused, see the chained-blocks attack below).
  const int chainer = raw_connect(ports[0]);
  REQUIRE(answer_sw(chainer, select_frame()) == 0x9000);
  std::vector<std::uint8_t> part{0x01, 0x04, 0x10, 0xD6, 0x00, 0x00, 0xFF};  // frame of 4 + 1 + 255
  part.resize(2 + 4 + 1 + 255, 0xAB);
  bool chain_closed = false;
  for (int i = 0; i < 400 && !chain_closed; ++i) {
    if (::send(chainer, part.data(), part.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(part.size())) break;
    std::uint8_t answer[4];
    pollfd p{chainer, POLLIN, 0};
    if (::poll(&p, 1, 2000) <= 0) break;
    chain_closed = ::recv(chainer, answer, sizeof answer, MSG_WAITALL) != 4;
  }
  CHECK((chain_closed || closed_by_peer(chainer, 1000)));
  CHECK(server.stats().peak_held_bytes <= options.memory_budget);

  // All given back once the connections are gone; a normal exchange works again.
  for (int fd : clients) ::close(fd);
  ::close(chainer);
  CHECK(eventually([&] { return server.stats().held_bytes == 0; }, 3000));
  core::DeviceLink link("127.0.0.1", ports[0]);
  link.connect();
  CHECK(link.atr().size() == 5);
}

TEST_CASE("a frame trickled a byte at a time is closed one idle timeout after it began") {
  test::ScratchDir tmp("trickle");
  test::DevicePki pki;
  const auto dirs = make_devices(pki, tmp.path(), 1);
  auto options = quiet_options();
  options.idle_timeout = milliseconds(600);
  device::Server server(dirs, options);
  server.start();
  const int port = server.ports()[0];

  // GET DATA CPLC (80 CA 9F 7F 00) one byte every 200 ms: each byte well within the idle timeout.
  const std::vector<std::uint8_t> frame{0x00, 0x05, 0x80, 0xCA, 0x9F, 0x7F, 0x00};
  const int fd = raw_connect(port);
  const auto t0 = std::chrono::steady_clock::now();
  bool closed = false;
  for (std::size_t i = 0; i < frame.size() && !closed; ++i) {
    if (::send(fd, &frame[i], 1, MSG_NOSIGNAL) != 1) break;
    closed = closed_by_peer(fd, 200);
  }
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  CHECK(closed);
  CHECK(elapsed >= milliseconds(550));
  CHECK(elapsed < milliseconds(1400));
  ::close(fd);

  // The same frame sent in pieces inside the idle timeout is answered, and so is the next one.
  const int ok = raw_connect(port);
  for (int round = 0; round < 2; ++round) {
    send_bytes(ok, {frame.begin(), frame.begin() + 3});
    std::this_thread::sleep_for(milliseconds(250));
    send_bytes(ok, {frame.begin() + 3, frame.end()});
    std::uint8_t head[2];
    pollfd p{ok, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 2000) == 1);
    REQUIRE(::recv(ok, head, 2, MSG_WAITALL) == 2);
    std::vector<std::uint8_t> body((head[0] << 8) | head[1]);
    REQUIRE(::recv(ok, body.data(), body.size(), MSG_WAITALL) == static_cast<ssize_t>(body.size()));
    CHECK(body.size() > 2);
    CHECK(body[body.size() - 2] == 0x90);
    std::this_thread::sleep_for(milliseconds(400));  // idle between commands: within the timeout
  }
  ::close(ok);
}

// The reported attack: 16 devices, 8 connections each, every one sends 16 chained 90 E2 blocks of
// 65528 bytes (1 MiB gathered) and then a STATUS, and stays open. A cleared vector kept its 1 MiB
// while the budget share went to 0: 128 MiB held under a 4 MiB budget. Here 2 connections per
// device (32 MiB of chained data per round) already hold eight budgets' worth without the fix.
TEST_CASE("the chained-blocks attack holds no more memory than the budget, with or without SELECT") {
  test::ScratchDir tmp("chain-attack");
  test::DevicePki pki;
  const auto dirs = make_devices(pki, tmp.path(), 16);
  auto options = quiet_options();
  options.memory_budget = std::size_t{4} << 20;
  device::Server server(dirs, options);
  server.start();
  const auto ports = server.ports();

  core::CommandApdu part;
  part.cla = 0x90;
  part.ins = 0xE2;
  part.data.assign(65528, 0x5A);
  part.extended = true;
  const auto block = frame_of(part);
  REQUIRE(block.size() == 2 + 65535);
  core::CommandApdu status_cmd;
  status_cmd.cla = 0x80;
  status_cmd.ins = 0xC4;
  status_cmd.le = 256;
  const auto status = frame_of(status_cmd);

  for (const bool select : {false, true}) {
    INFO("SELECT first: " << select);
    const std::size_t base = test::heap_in_use();
    std::vector<int> clients(32, -1);
    std::atomic<std::size_t> refused{0}, gathered{0}, finished{0};
    // Two clients at a time: within the budget a few connections gather at once, so most get through.
    const auto attack = [&](std::size_t first) {
      for (std::size_t i = first; i < clients.size(); i += 2) {
        const int fd = raw_connect(ports[i % ports.size()]);
        clients[i] = fd;
        if (select && answer_sw(fd, select_frame()) != 0x9000) continue;
        unsigned sw = 0x9000;
        std::size_t ok = 0;
        for (int b = 0; b < 16 && sw != 0; ++b) {
          sw = answer_sw(fd, block);
          ok += sw == 0x9000 ? 1 : 0;
          refused += sw == 0x6985 ? 1 : 0;
        }
        if (ok == 16) ++gathered;
        if (sw != 0 && answer_sw(fd, status) != 0) ++finished;
      }
    };
    std::thread t0(attack, 0), t1(attack, 1);
    t0.join();
    t1.join();
    if (select) {
      CHECK(refused == 0);
      CHECK(gathered >= 16);  // the attack did gather 1 MiB on many connections: the check below is not vacuous
    } else {
      CHECK(refused == 16 * clients.size());  // every chained block refused (6985) before SELECT
      CHECK(gathered == 0);
    }
    CHECK(finished >= 16);
    CHECK(server.stats().peak_held_bytes <= options.memory_budget);
    // Every connection idle, most of them open: what they hold is what the budget says (nothing),
    // give or take the workers' own small allocations.
    CHECK(eventually([&] { return server.stats().held_bytes == 0; }, 3000));
    const std::size_t held = test::heap_in_use() - std::min(base, test::heap_in_use());
    INFO("malloc in use grew by " << held << " bytes");
    CHECK(held <= options.memory_budget);
    for (int fd : clients)
      if (fd >= 0) ::close(fd);
    CHECK(eventually([&] { return server.stats().connections == 0; }, 5000));
  }
}
