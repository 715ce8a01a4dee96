// The personalization flow through PC/SC readers (flow_pcsc.sh: a private pcscd with 4 vpcd readers):
// cards with and without extended length, T=1 and T=0 (61XX / GET RESPONSE), each personalized
// through "pcsc:READER" and through a channel the caller holds. Real PostgreSQL and SoftHSM.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "keyline/core/device_channel.h"
#include "keyline/core/pcsc.h"
#include "keyline/station/personalize.h"
#include "station_fixture.h"

using namespace keyline;
using namespace keyline::station;
using namespace keyline::station::test_fixture;
using namespace std::chrono_literals;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  REQUIRE_MESSAGE(v != nullptr, name << " is not set: run this test through flow_pcsc.sh");
  return v;
}

struct Reader {
  std::string name;
  int port = 0;
};

std::vector<Reader> test_readers() {
  std::ifstream in(env("KEYLINE_PCSC_DIR") + "/readers");
  std::vector<Reader> out;
  for (std::string line; std::getline(in, line);) {
    const auto sp = line.rfind(' ');
    out.push_back({line.substr(0, sp), std::stoi(line.substr(sp + 1))});
  }
  REQUIRE(out.size() == 4);
  return out;
}

// A device made for this station's root and put into a reader (`keyline-device serve --vpcd`);
// pulled out when it goes.
class Card {
 public:
  Card(const std::string& name, const std::string& rom_ca, const Reader& reader, std::vector<std::string> extra) {
    const std::string dir = env("KEYLINE_PCSC_WORK") + "/" + name;
    const std::string bin = env("KEYLINE_DEVICE_BIN");
    REQUIRE(std::system(("rm -rf '" + dir + "' && '" + bin + "' make --dir '" + dir + "' --rom-ca '" + rom_ca +
                         "' > '" + dir + ".make.log' 2>&1")
                            .c_str()) == 0);
    // A card pulled out just before (the previous test's) is still present to pcscd until its next
    // poll of the vpcd reader: wait for the reader to be empty first, or that card's removal would
    // reach this one's session.
    wait_for(reader.name, false);
    m_pid = ::fork();
    REQUIRE(m_pid >= 0);
    if (m_pid == 0) {
      const std::string log = dir + ".log";
      if (!std::freopen(log.c_str(), "a", stderr) || !std::freopen(log.c_str(), "a", stdout)) ::_exit(126);
      std::vector<std::string> all{bin, "serve", "--dir", dir, "--vpcd", "127.0.0.1:" + std::to_string(reader.port)};
      all.insert(all.end(), extra.begin(), extra.end());
      std::vector<char*> argv;
      for (auto& a : all) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    wait_for(reader.name, true);  // pcscd polls the vpcd reader
  }
  ~Card() {
    if (m_pid > 0) ::kill(m_pid, SIGKILL), ::waitpid(m_pid, nullptr, 0);
  }
  Card(const Card&) = delete;
  Card& operator=(const Card&) = delete;

 private:
  static void wait_for(const std::string& reader, bool present) {
    core::pcsc::Context ctx;
    const std::vector<std::string> one{reader};
    auto s = ctx.states(one);
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (s[0].present != present && std::chrono::steady_clock::now() < deadline) s = ctx.wait(one, s, 500ms);
    REQUIRE_MESSAGE(s[0].present == present, "reader " << reader << (present ? " got no card" : " kept its card"));
  }

  pid_t m_pid = -1;
};

std::string journal_state(core::pq::Connection& db, const std::string& chip) {
  const auto r = db.exec("SELECT state FROM journal.device WHERE chip_id = $1 AND state <> 'void'", {chip});
  return r.empty() ? "none" : r.text(0, 0);
}

}  // namespace

TEST_CASE("cards in PC/SC readers, T=1 and T=0, with and without extended length, are personalized") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_flow_pcsc");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 8);
  const std::string rom_ca = pki_path(cfg, pki_file::root);
  const auto readers = test_readers();
  const std::vector<std::vector<std::string>> kinds{
      {}, {"--no-extended"}, {"--protocol", "t0"}, {"--protocol", "t0", "--no-extended"}};
  std::vector<std::unique_ptr<Card>> cards;
  for (std::size_t i = 0; i < kinds.size(); ++i)
    cards.push_back(std::make_unique<Card>("card-" + std::to_string(i), rom_ca, readers[i], kinds[i]));

  Personalizer p(cfg, keys, nullptr);
  std::vector<std::string> log;
  p.set_log([&log](const std::string& l) { log.push_back(l); });
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    CAPTURE(i);
    const std::string address = core::kPcscScheme + readers[i].name;
    const auto r = p.personalize(address, db);
    INFO(r.error);
    CHECK(r.in_outbox);
    CHECK(r.endpoint == address);
    CHECK(journal_state(db, r.chip_id) == "backed_up");
  }
  // The ATR's card capabilities said which cards take extended length: nothing was refused.
  CHECK(log.empty());
  CHECK(count(db, "SELECT count(*) FROM journal.device WHERE state = 'void'") == 0);
  CHECK(count(db, "SELECT count(DISTINCT imei) FROM journal.device") == 4);
}

TEST_CASE("a PC/SC channel the caller holds is personalized through and stays connected") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_flow_pcsc_held");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 2);
  const auto readers = test_readers();
  Card card("held", pki_path(cfg, pki_file::root), readers[0], {});
  Personalizer p(cfg, keys, nullptr);
  auto channel = core::open_device_channel(core::kPcscScheme + readers[0].name, p.channel_options());
  JournalDb jdb(db);
  const auto r = p.personalize(*channel, jdb);
  INFO(r.error);
  CHECK(r.in_outbox);
  CHECK(channel->connected());
  CHECK(r.endpoint == core::kPcscScheme + readers[0].name);
  // The same card again on the same channel: the record waits for publication, nothing new is claimed.
  const auto again = p.personalize(*channel, jdb);
  CHECK(again.imei == r.imei);
  CHECK(again.in_outbox);
}
