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
#include "pcsc_cards.h"
#include "station_fixture.h"

using namespace keyline;
using namespace keyline::station;
using namespace keyline::station::test_fixture;
using namespace std::chrono_literals;

namespace {

using keyline::test::Reader;
std::vector<Reader> test_readers() { return keyline::test::test_readers(4); }

// A device made for this station's root and put into a reader, once the reader is empty.
struct Card {
  Card(const std::string& name, const std::string& rom_ca, const Reader& reader, std::vector<std::string> extra)
      : card(keyline::test::make_device(name, rom_ca), reader, std::move(extra), true) {}
  keyline::test::Card card;
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
  // The plain channel is said for every device; these tests count the other notes.
  p.set_log([&log](const std::string& l) {
    if (l.find("plain channel") == std::string::npos) log.push_back(l);
  });
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
