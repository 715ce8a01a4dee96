// The device over real TCP sockets: a scripted station-side client (core::DeviceLink) runs the whole
// personalization and recovery dialogue, records every byte, and the faults the server injects.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <set>
#include <thread>
#include <vector>

#include "../../unit/device/device_test_util.h"
#include "keyline/core/backup_package.h"
#include "keyline/core/device_link.h"
#include "keyline/core/flash_image.h"
#include "keyline/device/log.h"
#include "keyline/device/server.h"
#include "testenv.h"

using namespace keyline;
namespace fs = std::filesystem;

namespace {

core::CommandApdu cmd(std::uint8_t cla, std::uint8_t ins, std::uint8_t p1, std::uint8_t p2,
                      const core::SecureBytes& data = {}, std::optional<std::uint32_t> le = std::nullopt) {
  core::CommandApdu c;
  c.cla = cla;
  c.ins = ins;
  c.p1 = p1;
  c.p2 = p2;
  c.data = data;
  c.le = le;
  return c;
}

core::CommandApdu select_applet() {
  return cmd(0x00, 0xA4, 0x04, 0x00, core::SecureBytes(std::begin(device::kAid), std::end(device::kAid)));
}

std::uint16_t store(core::DeviceLink& link, const core::SecureBytes& pkg, std::size_t block, bool extended) {
  std::uint8_t n = 0;
  for (std::size_t off = 0; off < pkg.size(); off += block, ++n) {
    const std::size_t len = std::min(block, pkg.size() - off);
    const bool last = off + len == pkg.size();
    auto c = cmd(0x80, 0xE2, static_cast<std::uint8_t>(last ? 0x88 : 0x08), n,
                 core::SecureBytes(pkg.begin() + off, pkg.begin() + off + len));
    c.extended = extended;
    const auto r = link.transmit(c);
    if (r.sw != core::sw::ok || last) return r.sw;
  }
  return 0;
}

device::ServerOptions quiet_options() {
  device::set_quiet(true);
  device::ServerOptions o;
  o.idle_timeout = std::chrono::milliseconds(5000);
  return o;
}

int raw_connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

// True when the peer closes the connection within the timeout.
bool closed_by_peer(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) <= 0) return false;
  std::uint8_t b[64];
  return ::recv(fd, b, sizeof b, 0) == 0;
}

}  // namespace

TEST_CASE("personalize and recover over TCP; the chip key never crosses the link") {
  test::ScratchDir tmp("link");
  test::DevicePki pki;
  const auto dir = test::make_test_device(pki, tmp.path());
  const core::SecureBytes chip_key = [&] {
    const auto k = *device::read_bytes(device::DevicePaths{dir}.chip_key());
    return core::SecureBytes(k.begin(), k.end());
  }();
  REQUIRE(chip_key.size() == 32);

  device::Server server({dir}, quiet_options());
  server.start();
  core::DeviceLink link("127.0.0.1", server.ports()[0]);
  core::Bytes captured;
  std::size_t out_bytes = 0, in_bytes = 0;
  link.set_capture([&](bool outbound, const std::uint8_t* d, std::size_t n) {
    captured.insert(captured.end(), d, d + n);
    (outbound ? out_bytes : in_bytes) += n;
  });
  link.connect();
  CHECK(link.atr() == core::Bytes(std::begin(device::kAtr), std::end(device::kAtr)));

  REQUIRE(link.transmit(select_applet()).sw == core::sw::ok);
  const auto cplc_r = link.transmit(cmd(0x80, 0xCA, 0x9F, 0x7F, {}, 256));
  REQUIRE(cplc_r.sw == core::sw::ok);
  const auto chip_id = core::Cplc::parse(cplc_r.data.data(), cplc_r.data.size()).chip_id();
  CHECK(chip_id == device::Chip::load(dir).chip_id());

  const auto pkg = pki.package_for(chip_id, "260531793113837");
  const auto encoded = pkg.encode();
  REQUIRE(encoded.size() > 1000);
  // Extended-length blocks, several of them.
  REQUIRE(store(link, encoded, 700, true) == core::sw::ok);
  CHECK(link.transmit(select_applet()).sw == core::sw::ok);
  CHECK(store(link, encoded, 700, true) == core::sw::conditions_not_satisfied);

  const auto backup_r = link.transmit(cmd(0x80, 0xCA, 0xDF, 0x20, {}, 256));
  REQUIRE(backup_r.sw == core::sw::ok);
  const core::Bytes backup(backup_r.data.begin(), backup_r.data.end());
  CHECK(core::parse_backup_header(backup).chip_id == chip_id);

  const auto drill = link.transmit(cmd(0x80, 0xC6, 0x00, 0x00, {}, 256));
  REQUIRE(drill.sw == core::sw::ok);
  CHECK(core::Bytes(drill.data.begin(), drill.data.end()) == core::package_digest(encoded));

  const auto before = device::boot_offline(dir);
  CHECK(before.imei.str() == "260531793113837");

  // Flash lost; recovery writes backup + chain (what the public DB holds) and boots it.
  device::wipe_flash(dir);
  CHECK(link.transmit(cmd(0x80, 0xC6, 0x00, 0x00, {}, 256)).sw == core::sw::referenced_data_not_found);
  core::FlashImage image;
  image.backup = backup;
  image.certificates = {pkg.identity_cert, pkg.ca_chain[0]};
  const auto bytes = image.encode();
  for (std::size_t off = 0; off < bytes.size(); off += 240) {
    const std::size_t len = std::min<std::size_t>(240, bytes.size() - off);
    REQUIRE(link.transmit(cmd(0x00, 0xD6, static_cast<std::uint8_t>(off >> 8), static_cast<std::uint8_t>(off),
                              core::SecureBytes(bytes.begin() + off, bytes.begin() + off + len)))
                .sw == core::sw::ok);
  }
  const auto boot = link.transmit(cmd(0x80, 0xC2, 0x00, 0x00, {}, 256));
  REQUIRE(boot.sw == core::sw::ok);
  CHECK(std::string(boot.data.begin(), boot.data.begin() + 15) == "260531793113837");
  CHECK(core::to_hex(boot.data.data() + 15, 32) == before.identity_fingerprint);
  CHECK(core::to_hex(boot.data.data() + 47, 32) == before.transport_fingerprint);

  const auto after = device::boot_offline(dir);
  CHECK(after.imei == before.imei);
  CHECK(after.identity_fingerprint == before.identity_fingerprint);
  CHECK(after.transport_fingerprint == before.transport_fingerprint);
  CHECK(after.package_digest == before.package_digest);
  const auto st = link.transmit(cmd(0x80, 0xC4, 0x00, 0x00, {}, 256));
  REQUIRE(st.data.size() == 27);
  CHECK(st.data[11] == 0x01);
  link.close();
  server.stop();

  // The capture saw the whole dialogue, and not one 8-byte window of the chip key.
  CHECK(out_bytes > encoded.size());
  CHECK(in_bytes > backup.size());
  auto contains = [&](const std::uint8_t* needle, std::size_t n) {
    return std::search(captured.begin(), captured.end(), needle, needle + n) != captured.end();
  };
  CHECK_FALSE(contains(chip_key.data(), chip_key.size()));
  for (std::size_t i = 0; i + 8 <= chip_key.size(); ++i) CHECK_FALSE(contains(chip_key.data() + i, 8));
  // Sanity check of the search itself: the package's own bytes are in the capture.
  CHECK(contains(encoded.data() + 10, 8));
}

TEST_CASE("malformed frames close the connection; the server keeps serving") {
  test::ScratchDir tmp("frames");
  test::DevicePki pki;
  const auto dir = test::make_test_device(pki, tmp.path());
  auto options = quiet_options();
  options.idle_timeout = std::chrono::milliseconds(400);
  device::Server server({dir}, options);
  server.start();
  const int port = server.ports()[0];

  {  // zero-length frame
    const int fd = raw_connect(port);
    const std::uint8_t z[] = {0x00, 0x00};
    ::send(fd, z, sizeof z, 0);
    CHECK(closed_by_peer(fd, 2000));
    ::close(fd);
  }
  {  // a length over the maximum
    const int fd = raw_connect(port);
    const std::uint8_t big[] = {0xFF, 0xFF, 0x00};
    ::send(fd, big, sizeof big, 0);
    CHECK(closed_by_peer(fd, 2000));
    ::close(fd);
  }
  {  // idle connection: closed after the idle timeout, not before
    const int fd = raw_connect(port);
    CHECK_FALSE(closed_by_peer(fd, 100));
    CHECK(closed_by_peer(fd, 3000));
    ::close(fd);
  }
  core::DeviceLink link("127.0.0.1", port);
  link.connect();
  // Short garbage APDUs get a status word.
  CHECK(core::decode_response(link.transmit_raw({0x80, 0xCA, 0x9F})).sw == core::sw::wrong_length);
  // 3C: no INS of the applet (50 is INITIALIZE UPDATE since the service channel, docs/protocol.md 10).
  CHECK(link.transmit(cmd(0x80, 0x3C, 0x00, 0x00, {}, 256)).sw == core::sw::ins_not_supported);
  CHECK(link.transmit(cmd(0x80, 0xCA, 0x9F, 0x7F, {}, 256)).sw == core::sw::ok);
}

TEST_CASE("fault injection over TCP: delays, dropped connection, power cut during the flash write") {
  test::ScratchDir tmp("faults");
  test::DevicePki pki;
  const auto dir = test::make_test_device(pki, tmp.path());
  auto options = quiet_options();
  options.device.faults.delay_id_ms = 10;
  options.device.faults.delay_store_ms = 50;
  options.device.faults.delay_flash_ms = 300;
  options.device.faults.power_cut_at_byte = 64;
  device::Server server({dir}, options);
  server.start();
  core::DeviceLink link("127.0.0.1", server.ports()[0]);
  link.connect();
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(link.transmit(cmd(0x80, 0xCA, 0x9F, 0x7F, {}, 256)).sw == core::sw::ok);
  CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(10));

  const auto chip_id = device::Chip::load(dir).chip_id();
  const auto encoded = pki.package_for(chip_id, "490154203237518").encode();
  REQUIRE(link.transmit(select_applet()).sw == core::sw::ok);
  t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(store(link, encoded, 4000, true), core::IoError);  // power cut: the link goes down
  CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(350));
  CHECK_FALSE(link.connected());
  CHECK_FALSE(fs::exists(device::DevicePaths{dir}.image()));
  CHECK(device::Chip::load(dir).lifecycle() == device::Lifecycle::Blank);

  link.reconnect();
  REQUIRE(link.transmit(select_applet()).sw == core::sw::ok);
  CHECK(store(link, encoded, 4000, true) == core::sw::ok);
  CHECK(device::boot_offline(dir).imei.str() == "490154203237518");
  server.stop();

  auto drop = quiet_options();
  drop.device.faults.drop_after_bytes = 40;
  device::Server dropping({dir}, drop);
  dropping.start();
  core::DeviceLink l2("127.0.0.1", dropping.ports()[0]);
  l2.connect();  // power on + ATR: a few bytes
  CHECK(l2.transmit(cmd(0x80, 0xCA, 0x9F, 0x7F, {}, 256)).sw == core::sw::ok);
  CHECK_THROWS_AS(
      {
        for (int i = 0; i < 10; ++i) l2.transmit(cmd(0x80, 0xCA, 0x9F, 0x7F, {}, 256));
      },
      core::IoError);
}

TEST_CASE("a fleet of 256 devices in one process, one port each") {
  test::ScratchDir tmp("fleet256");
  test::DevicePki pki;
  pki.write_root(tmp.path() / "root.pem");
  device::make_fleet(tmp.path() / "fleet", 256, tmp.path() / "root.pem");
  const auto dirs = device::list_fleet(tmp.path() / "fleet");
  REQUIRE(dirs.size() == 256);
  device::Server server(dirs, quiet_options());
  server.start();
  const auto ports = server.ports();
  REQUIRE(ports.size() == 256);
  std::set<std::string> ids;
  for (std::size_t i = 0; i < ports.size(); i += 15) {
    core::DeviceLink link("127.0.0.1", ports[i]);
    link.connect();
    const auto r = link.transmit(cmd(0x80, 0xCA, 0x9F, 0x7F, {}, 256));
    REQUIRE(r.sw == core::sw::ok);
    const auto id = core::Cplc::parse(r.data.data(), r.data.size()).chip_id();
    CHECK(id == server.device(i).chip().chip_id());
    ids.insert(id.str());
  }
  CHECK(ids.size() == (ports.size() + 14) / 15);
}

namespace {

// A plain TCP peer playing the device: reads one command frame, then answers with `answer` (a whole
// vpcd frame) in pieces of `piece` bytes, `gap` apart, until it is sent or the link breaks.
class ScriptedDevice {
 public:
  ScriptedDevice(core::Bytes answer, std::size_t piece, std::chrono::milliseconds gap, int frames = 1)
      : m_answer(std::move(answer)) {
    m_listen = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    REQUIRE(::bind(m_listen, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(m_listen, 4) == 0);
    REQUIRE(::getsockname(m_listen, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    m_port = ntohs(a.sin_port);
    m_thread = std::thread([this, piece, gap, frames] { run(piece, gap, frames); });
  }
  ~ScriptedDevice() {
    m_thread.join();
    ::close(m_listen);
  }
  int port() const { return m_port; }

 private:
  void run(std::size_t piece, std::chrono::milliseconds gap, int frames) {
    const int fd = ::accept(m_listen, nullptr, nullptr);
    if (fd < 0) return;
    for (int f = 0; f < frames; ++f) {
      std::uint8_t head[2];
      if (::recv(fd, head, 2, MSG_WAITALL) != 2) break;
      std::vector<std::uint8_t> body((head[0] << 8) | head[1]);
      if (::recv(fd, body.data(), body.size(), MSG_WAITALL) != static_cast<ssize_t>(body.size())) break;
      bool broken = false;
      for (std::size_t off = 0; off < m_answer.size() && !broken; off += piece) {
        if (off) std::this_thread::sleep_for(gap);
        const std::size_t n = std::min(piece, m_answer.size() - off);
        broken = ::send(fd, m_answer.data() + off, n, MSG_NOSIGNAL) != static_cast<ssize_t>(n);
      }
      if (broken) break;
    }
    ::close(fd);
  }

  core::Bytes m_answer;
  int m_listen = -1;
  int m_port = 0;
  std::thread m_thread;
};

// The descriptor of this process's TCP socket whose peer is 127.0.0.1:port, or -1.
int socket_connected_to(int port) {
  std::vector<int> fds;
  for (const auto& e : fs::directory_iterator("/proc/self/fd")) fds.push_back(std::stoi(e.path().filename()));
  for (int fd : fds) {
    sockaddr_in peer{};
    socklen_t len = sizeof peer;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) == 0 && peer.sin_family == AF_INET &&
        ntohs(peer.sin_port) == port)
      return fd;
  }
  return -1;
}

// The vpcd frame of a response: 40 data bytes and 9000.
core::Bytes answer_frame() {
  core::Bytes frame{0x00, 42};
  frame.resize(2 + 40, 0x5A);
  frame.push_back(0x90);
  frame.push_back(0x00);
  return frame;
}

}  // namespace

TEST_CASE("device link: the deadline covers a whole answer, so a device trickling bytes times out") {
  // One byte every 100 ms: the 44-byte answer would take 4.3 s, each recv only 100 ms.
  ScriptedDevice trickle(answer_frame(), 1, std::chrono::milliseconds(100));
  core::DeviceLinkOptions o;
  o.power_on = false;
  o.io_timeout = std::chrono::milliseconds(500);
  core::DeviceLink link("127.0.0.1", trickle.port(), o);
  link.connect();
  const auto t0 = std::chrono::steady_clock::now();
  std::string waiting_for, message;
  int code = 0;
  try {
    link.transmit(cmd(0x80, 0xCA, 0x9F, 0x7F, {}, 256));
  } catch (const core::LinkTimeout& e) {
    waiting_for = e.waiting_for();
    message = e.what();
    code = e.numeric();
  }
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  CHECK(code == 1402);
  CHECK(waiting_for == "APDU 80 CA 9F 7F");
  CHECK(message.find("80 CA 9F 7F") != std::string::npos);
  CHECK(elapsed >= std::chrono::milliseconds(450));
  CHECK(elapsed < std::chrono::milliseconds(1500));
  CHECK_FALSE(link.connected());
}

TEST_CASE("device link: an answer split into pieces within the deadline arrives, twice in a row") {
  // Three pieces 100 ms apart, 500 ms deadline: the shortened receive timeout of the first frame
  // must not cut the second short.
  ScriptedDevice split(answer_frame(), 15, std::chrono::milliseconds(100), 2);
  core::DeviceLinkOptions o;
  o.power_on = false;
  o.io_timeout = std::chrono::milliseconds(500);
  core::DeviceLink link("127.0.0.1", split.port(), o);
  link.connect();
  for (int i = 0; i < 2; ++i) {
    const auto r = link.transmit(cmd(0x80, 0xCA, 0x9F, 0x7F, {}, 256));
    CHECK(r.sw == core::sw::ok);
    CHECK(r.data.size() == 40);
  }
}

TEST_CASE("device link: a device reading its command slowly cannot hold the send past the deadline") {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int small = 4096;  // set before listen: the accepted socket keeps it, and the window stays small
  ::setsockopt(listener, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(listener, 1) == 0);
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &alen) == 0);
  std::atomic<bool> done{false};
  std::thread peer([&] {
    const int fd = ::accept(listener, nullptr, nullptr);
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(6);
    // 1 KiB every 100 ms: the window reopens well within each single send's timeout.
    std::uint8_t b[1024];
    while (!done && std::chrono::steady_clock::now() < end && ::recv(fd, b, sizeof b, 0) > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ::close(fd);
  });
  core::DeviceLinkOptions o;
  o.power_on = false;
  o.io_timeout = std::chrono::milliseconds(500);
  core::DeviceLink link("127.0.0.1", ntohs(a.sin_port), o);
  link.connect();
  // The link's socket is the one whose peer is the listener. A small send buffer (which also stops
  // its growth) keeps the 64 KiB frame from vanishing into loopback's kernel buffers at once.
  const int link_fd = socket_connected_to(ntohs(a.sin_port));
  REQUIRE(link_fd >= 0);
  REQUIRE(::setsockopt(link_fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
  core::SecureBytes apdu{0x00, 0xD6, 0x00, 0x00, 0x00, 0xFD, 0xE8};  // extended Lc = 65000
  apdu.resize(7 + 65000, 0x11);
  const auto t0 = std::chrono::steady_clock::now();
  std::string waiting_for, message;
  try {
    link.transmit_raw(apdu);
  } catch (const core::LinkTimeout& e) {
    waiting_for = e.waiting_for();
    message = e.what();
  } catch (const core::Error&) {
  }
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  done = true;
  peer.join();
  ::close(listener);
  CHECK(waiting_for == "APDU 00 D6 00 00");
  CHECK(message.find("did not take") != std::string::npos);
  CHECK(elapsed < std::chrono::milliseconds(1500));
}

namespace {

// A plain TCP peer playing a hostile or slow card: answers each command frame with what `respond`
// returns for it (a response APDU), `delay` after reading it, for at most `max_frames` frames or
// until the client goes away. Counts what it sent, the bound on what the client can have gathered.
class ScriptedCard {
 public:
  using Respond = std::function<core::Bytes(const std::vector<std::uint8_t>& apdu)>;
  ScriptedCard(Respond respond, std::chrono::milliseconds delay, int max_frames)
      : m_respond(std::move(respond)) {
    m_listen = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    REQUIRE(::bind(m_listen, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(m_listen, 4) == 0);
    REQUIRE(::getsockname(m_listen, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    m_port = ntohs(a.sin_port);
    m_thread = std::thread([this, delay, max_frames] { run(delay, max_frames); });
  }
  ~ScriptedCard() {
    join();
    ::close(m_listen);
  }
  int port() const { return m_port; }
  // Waits for the card to stop (the client gone, or max_frames served): then its counts are final.
  void join() {
    if (m_thread.joinable()) m_thread.join();
  }
  int frames() const { return m_frames; }
  std::size_t bytes_sent() const { return m_sent; }

 private:
  void run(std::chrono::milliseconds delay, int max_frames) {
    const int fd = ::accept(m_listen, nullptr, nullptr);
    if (fd < 0) return;
    while (m_frames < max_frames) {
      std::uint8_t head[2];
      if (::recv(fd, head, 2, MSG_WAITALL) != 2) break;
      std::vector<std::uint8_t> apdu((head[0] << 8) | head[1]);
      if (::recv(fd, apdu.data(), apdu.size(), MSG_WAITALL) != static_cast<ssize_t>(apdu.size())) break;
      std::this_thread::sleep_for(delay);
      const core::Bytes answer = m_respond(apdu);
      core::Bytes frame{static_cast<std::uint8_t>(answer.size() >> 8), static_cast<std::uint8_t>(answer.size())};
      frame.insert(frame.end(), answer.begin(), answer.end());
      if (::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(frame.size())) break;
      m_sent += frame.size();
      ++m_frames;
    }
    ::close(fd);
  }

  Respond m_respond;
  int m_listen = -1;
  int m_port = 0;
  std::atomic<int> m_frames{0};
  std::atomic<std::size_t> m_sent{0};
  std::thread m_thread;
};

core::Bytes data_and_sw(std::size_t n, std::uint16_t sw) {
  core::Bytes out(n, 0x5A);
  out.push_back(static_cast<std::uint8_t>(sw >> 8));
  out.push_back(static_cast<std::uint8_t>(sw));
  return out;
}

core::DeviceLinkOptions scripted_options(std::chrono::milliseconds io_timeout) {
  core::DeviceLinkOptions o;
  o.power_on = false;
  o.io_timeout = io_timeout;
  return o;
}

// What one transmit threw: its numeric code, message and (for LinkTimeout) the command it names.
struct Outcome {
  int code = 0;
  std::string message, waiting_for;
  std::chrono::steady_clock::duration elapsed{};
  bool returned = false;
};

template <class F>
Outcome outcome_of(F&& f) {
  Outcome o;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    f();
    o.returned = true;
  } catch (const core::LinkTimeout& e) {
    o.code = e.numeric();
    o.message = e.what();
    o.waiting_for = e.waiting_for();
  } catch (const core::Error& e) {
    o.code = e.numeric();
    o.message = e.what();
  }
  o.elapsed = std::chrono::steady_clock::now() - t0;
  return o;
}

constexpr int kBadApdu = 1110;
constexpr int kLinkTimeout = 1402;

}  // namespace

TEST_CASE("device link: endless 61XX answers, each within its Le, are refused at the caller's cap") {
  // Every answer is 256 bytes and "more to come" (6100): legal piece by piece, endless in all.
  ScriptedCard card([](const std::vector<std::uint8_t>&) { return data_and_sw(256, 0x6100); },
                    std::chrono::milliseconds(0), 5000);
  core::DeviceLink link("127.0.0.1", card.port(), scripted_options(std::chrono::milliseconds(5000)));
  link.connect();
  const auto o = outcome_of([&] { link.transmit(cmd(0x80, 0xCA, 0xDF, 0x20, {}, 256), 1024); });
  CHECK_FALSE(link.connected());  // a device that broke the dialect is not asked again
  link.close();
  card.join();
  CHECK(o.code == kBadApdu);
  CHECK(o.message.find("80 CA DF 20") != std::string::npos);
  CHECK(o.message.find("1024-byte cap") != std::string::npos);
  CHECK(o.message.find("5A5A") == std::string::npos);
  CHECK(o.message.find("5A 5A") == std::string::npos);
  // 1024 bytes fit in the first answer and three GET RESPONSE; the fifth answer is one too many.
  CHECK(card.frames() == 5);
  CHECK(card.bytes_sent() <= 5 * (2 + 258));
}

TEST_CASE("device link: an answer longer than the Le it answers is refused, not gathered") {
  SUBCASE("a GET RESPONSE answered with 65533 bytes, again and again") {
    // The attack that made a client gather 268 MB: 6100 asks for 256 bytes, the device sends 65533.
    ScriptedCard card(
        [](const std::vector<std::uint8_t>& apdu) { return data_and_sw(apdu[1] == 0xC0 ? 65533 : 256, 0x6100); },
        std::chrono::milliseconds(0), 200);
    core::DeviceLink link("127.0.0.1", card.port(), scripted_options(std::chrono::milliseconds(5000)));
    link.connect();
    const auto o = outcome_of([&] { link.transmit(cmd(0x80, 0xCA, 0xDF, 0x20, {}, 256)); });
    link.close();
    card.join();
    CHECK(o.code == kBadApdu);
    CHECK(o.message.find("GET RESPONSE for 80 CA DF 20") != std::string::npos);
    CHECK(o.message.find("65533 bytes where Le allows 256") != std::string::npos);
    CHECK(card.frames() <= 2);
  }
  SUBCASE("a first answer past a short Le") {
    ScriptedCard card([](const std::vector<std::uint8_t>&) { return data_and_sw(43, 0x9000); },
                      std::chrono::milliseconds(0), 5);
    core::DeviceLink link("127.0.0.1", card.port(), scripted_options(std::chrono::milliseconds(5000)));
    link.connect();
    const auto o = outcome_of([&] { link.transmit(cmd(0x80, 0xCA, 0x9F, 0x7F, {}, 42)); });
    CHECK(o.code == kBadApdu);
    CHECK(o.message.find("43 bytes where Le allows 42") != std::string::npos);
  }
  SUBCASE("data in answer to a command without Le") {
    ScriptedCard card([](const std::vector<std::uint8_t>&) { return data_and_sw(1, 0x9000); },
                      std::chrono::milliseconds(0), 5);
    core::DeviceLink link("127.0.0.1", card.port(), scripted_options(std::chrono::milliseconds(5000)));
    link.connect();
    const auto o = outcome_of([&] { link.transmit(select_applet()); });
    CHECK(o.code == kBadApdu);
    CHECK(o.message.find("answer to 00 A4 04 00 carries 1 bytes where Le allows 0") != std::string::npos);
  }
}

TEST_CASE("device link: slow answers, each within io_timeout, cannot stretch one exchange past it") {
  // Each answer 150 ms late, 64 bytes and 6140, twelve times: 1.8 s of frames each well within the
  // 500 ms deadline. The whole exchange has one deadline.
  std::atomic<int> answered{0};
  ScriptedCard card(
      [&](const std::vector<std::uint8_t>&) { return data_and_sw(64, ++answered < 12 ? 0x6140 : 0x9000); },
      std::chrono::milliseconds(150), 12);
  core::DeviceLink link("127.0.0.1", card.port(), scripted_options(std::chrono::milliseconds(500)));
  link.connect();
  const auto o = outcome_of([&] { link.transmit(cmd(0x80, 0xCA, 0xDF, 0x20, {}, 256)); });
  CHECK_FALSE(o.returned);
  CHECK(o.code == kLinkTimeout);
  CHECK(o.waiting_for == "APDU 80 CA DF 20");
  CHECK(o.message.find("did not complete APDU 80 CA DF 20 within 500 ms") != std::string::npos);
  CHECK(o.message.find("APDU 00 C0 00 00") != std::string::npos);
  CHECK(o.elapsed >= std::chrono::milliseconds(450));
  CHECK(o.elapsed < std::chrono::milliseconds(900));
  CHECK_FALSE(link.connected());
  card.join();
  CHECK(card.frames() <= 4);
}

TEST_CASE("device link: a 1 MiB answer in 256-byte GET RESPONSE pieces, the largest the applet has, arrives") {
  core::ResponseChainer chainer;
  core::ResponseApdu full;
  full.data.resize(core::kMaxResponseDefault);
  for (std::size_t i = 0; i < full.data.size(); ++i) full.data[i] = static_cast<std::uint8_t>(i * 31 + 7);
  const core::SecureBytes expected = full.data;
  ScriptedCard card(
      [&](const std::vector<std::uint8_t>& apdu) {
        const auto c = core::decode_command(apdu.data(), apdu.size());
        const auto r = c.ins == 0xC0 ? chainer.next(*c.le) : chainer.start(full, 256);
        const auto wire = core::encode_response(r);
        return core::Bytes(wire.begin(), wire.end());
      },
      std::chrono::milliseconds(0), 5000);
  core::DeviceLink link("127.0.0.1", card.port(), scripted_options(std::chrono::milliseconds(20000)));
  link.connect();
  const auto r = link.transmit(cmd(0x80, 0xCA, 0xDF, 0x20, {}, 256));
  CHECK(r.sw == core::sw::ok);
  CHECK(r.data.size() == expected.size());
  CHECK(r.data == expected);
  link.close();
  card.join();
  CHECK(card.frames() == 4096);
}
