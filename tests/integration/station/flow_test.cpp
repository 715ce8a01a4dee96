// The personalization flow against the real PostgreSQL cluster, the real SoftHSM token and real
// emulated devices: the journal's state machine (each state resumes at the step route() names) and
// the extended-length fall back on a device channel (ISO 7816-4 section 5.1).
#include <doctest/doctest.h>

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "keyline/core/applet_protocol.h"
#include "keyline/core/device_channel.h"
#include "keyline/station/personalize.h"
#include "station_fixture.h"

using namespace keyline;
using namespace keyline::station;
using namespace keyline::station::test_fixture;

namespace {

std::string journal_state(core::pq::Connection& db, const std::string& chip) {
  const auto r = db.exec("SELECT state FROM journal.device WHERE chip_id = $1 AND state <> 'void'", {chip});
  return r.empty() ? "none" : r.text(0, 0);
}

// Records the step hooks of one personalization; stops (throws) right after `stop_after` when set.
struct StepLog {
  std::vector<Step> seen;
  std::optional<Step> stop_after;
  StepHook hook() {
    return [this](Step s, const std::string&) {
      seen.push_back(s);
      if (stop_after && s == *stop_after) throw std::runtime_error(std::string("stopped after ") + step_name(s));
    };
  }
};

std::string names(const std::vector<Step>& steps) {
  std::string s;
  for (const Step x : steps) s += std::string(s.empty() ? "" : " ") + step_name(x);
  return s;
}

// The hooks a run with no public DB reaches: read-device, then the route's steps; publish throws
// PublishPending before its hook (no public DB configured) unless nothing was left to publish.
std::vector<Step> expected_hooks(JournalState state, bool personalized) {
  std::vector<Step> v{Step::ReadDevice};
  for (const Step s : route(state, personalized).steps)
    if (s != Step::Publish) v.push_back(s);
  return v;
}

bool is_extended(const core::CommandApdu& c) {
  return c.extended || c.data.size() > 255 || (c.le && *c.le > 256);
}

// A device channel in front of the real link that plays a card or reader without extended length:
// it answers extended APDUs itself (they never reach the device) with 6700, or refuses them as a
// PC/SC reader does (ExtendedLengthRefused); StoreOnly lets extended reads through and refuses an
// extended STORE DATA; BackupOnly refuses an extended GET DATA backup. It still says extended_length()
// until the flow disables it.
class NoExtendedChannel : public core::DeviceChannel {
 public:
  enum class Mode { Answer6700, Refuse, StoreOnly, BackupOnly };
  NoExtendedChannel(const std::string& address, Mode mode)
      : m_inner(core::open_device_channel(address)), m_mode(mode) {}

  void connect() override { m_inner->connect(); }
  void close() noexcept override { m_inner->close(); }
  bool connected() const noexcept override { return m_inner->connected(); }
  core::ResponseApdu transmit(const core::CommandApdu& c, std::size_t max_response) override {
    // Once disabled, the channel sends short APDUs whatever it is given (core::DeviceChannel), as the
    // inner link does; a flow that still asks for the extended form is counted.
    if (!m_extended && (c.extended || (c.le && *c.le > 256))) ++asked_extended_when_off;
    const bool ext = m_extended && is_extended(c);
    const bool backup = c.ins == core::applet::ins::get_data && c.p1 == (core::applet::tag::backup >> 8);
    const bool refuse = m_mode == Mode::StoreOnly    ? c.ins == core::applet::ins::store_data
                        : m_mode == Mode::BackupOnly ? backup
                                                     : true;
    if (ext && refuse) {
      ++refused;
      if (m_mode == Mode::Answer6700) return core::ResponseApdu{{}, core::sw::wrong_length};
      sent_refused.push_back(c.ins);
      throw core::IoError(core::ErrorCode::ExtendedLengthRefused, "test reader: no extended APDUs");
    }
    sent.push_back({c.ins, ext});
    return m_inner->transmit(c, max_response);
  }
  bool extended_length() const noexcept override { return m_extended; }
  void disable_extended_length() noexcept override {
    m_extended = false;
    m_inner->disable_extended_length();
    ++disabled;
  }
  const std::string& address() const noexcept override { return m_inner->address(); }
  const core::Bytes& atr() const noexcept override { return m_inner->atr(); }

  struct Sent {
    std::uint8_t ins;
    bool extended;
  };
  std::vector<Sent> sent;  // what reached the device
  int refused = 0;
  int disabled = 0;
  int asked_extended_when_off = 0;
  std::vector<std::uint8_t> sent_refused;  // INS of the commands refused with ExtendedLengthRefused

 private:
  std::unique_ptr<core::DeviceChannel> m_inner;
  Mode m_mode;
  bool m_extended = true;
};

int count_ins(const std::vector<NoExtendedChannel::Sent>& sent, std::uint8_t ins, bool extended) {
  return static_cast<int>(
      std::count_if(sent.begin(), sent.end(), [&](const auto& s) { return s.ins == ins && s.extended == extended; }));
}

}  // namespace

TEST_CASE("every journal state resumes at the step the route table names, with the same IMEI") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_flow_route");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 8);
  Fleet fleet(4, pki_path(cfg, pki_file::root));

  // Stopped after `stop`: the journal state and device lifecycle it leaves, and the hooks of the
  // resume that follows.
  struct Case {
    Step stop;
    const char* state;
    JournalState js;
    bool personalized;
  };
  const Case cases[] = {
      {Step::Claim, "claimed", JournalState::Claimed, false},
      {Step::Issue, "issued", JournalState::Issued, false},
      {Step::Store, "issued", JournalState::Issued, true},
      {Step::Record, "backed_up", JournalState::BackedUp, true},
  };
  for (std::size_t i = 0; i < std::size(cases); ++i) {
    const Case& c = cases[i];
    CAPTURE(step_name(c.stop));
    const std::string& device = fleet.endpoints()[i];
    StepLog first;
    first.stop_after = c.stop;
    Personalizer p1(cfg, keys, nullptr);
    p1.set_step_hook(first.hook());
    const auto r1 = p1.personalize(device, db);
    INFO(r1.error);
    REQUIRE(r1.reached == c.stop);
    REQUIRE(journal_state(db, r1.chip_id) == c.state);

    StepLog second;
    Personalizer p2(cfg, keys, nullptr);
    p2.set_step_hook(second.hook());
    const auto r2 = p2.personalize(device, db);
    INFO(r2.error);
    CHECK(names(second.seen) == names(expected_hooks(c.js, c.personalized)));
    CHECK(r2.imei == r1.imei);
    CHECK(r2.in_outbox);
    CHECK(r2.error_code == static_cast<int>(errc::PublishPending));
    CHECK(journal_state(db, r1.chip_id) == "backed_up");
    // A resume of a personalized device signs nothing again; a blank one is issued again.
    const auto begins = count(db, "SELECT count(*) FROM journal.audit WHERE chip_id = $1 AND event = 'sign.begin'",
                              {r1.chip_id});
    CHECK(begins == (c.personalized ? 2 : 4));
  }
  // The published state: a personalized device this station finished is refused at read-device.
  {
    StepLog log;
    Personalizer p(cfg, keys, nullptr);
    const auto r = p.personalize(fleet.endpoints()[3], db);
    REQUIRE(r.in_outbox);
    mark_published(db, r.chip_id, r.journal_id);
    p.set_step_hook(log.hook());
    const auto again = p.personalize(fleet.endpoints()[3], db);
    CHECK(again.error_code == static_cast<int>(errc::AlreadyPersonalized));
    CHECK(again.reached == Step::ReadDevice);
    CHECK(log.seen.empty());
  }
}

TEST_CASE("a device that answers 6700 to extended APDUs falls back on GET DATA CPLC, before anything is stored") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_flow_6700");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 2);
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  Personalizer p(cfg, keys, nullptr);
  std::vector<std::string> log;
  // The plain channel is said for every device; these tests count the other notes.
  p.set_log([&log](const std::string& l) {
    if (l.find("plain channel") == std::string::npos) log.push_back(l);
  });
  JournalDb jdb(db);

  NoExtendedChannel ch(fleet.endpoints()[0], NoExtendedChannel::Mode::Answer6700);
  const auto r = p.personalize(ch, jdb);
  INFO(r.error);
  CHECK(r.in_outbox);
  CHECK(r.endpoint == fleet.endpoints()[0]);
  CHECK(ch.refused == 1);  // the probe, and nothing else was sent in extended form
  CHECK(ch.disabled == 1);
  CHECK(count_ins(ch.sent, core::applet::ins::store_data, false) > 1);  // 240-byte blocks
  CHECK(count_ins(ch.sent, core::applet::ins::store_data, true) == 0);
  CHECK(ch.asked_extended_when_off == 0);  // backup and drill were built short
  CHECK(ch.connected());  // the caller's channel stays open
  REQUIRE(log.size() == 1);
  CHECK(log[0].find(fleet.endpoints()[0]) != std::string::npos);
  CHECK(log[0].find("short APDUs") != std::string::npos);

  // A second device session on the same address (the record waits for publication) falls back again,
  // and the log says nothing more: once per address.
  NoExtendedChannel again(fleet.endpoints()[0], NoExtendedChannel::Mode::Answer6700);
  const auto r2 = p.personalize(again, jdb);
  CHECK(r2.imei == r.imei);
  CHECK(again.disabled == 1);
  CHECK(log.size() == 1);
}

TEST_CASE("a reader that refuses extended APDUs (ExtendedLengthRefused) gets short ones for the device") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_flow_refused");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 2);
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  Personalizer p(cfg, keys, nullptr);
  std::vector<std::string> log;
  // The plain channel is said for every device; these tests count the other notes.
  p.set_log([&log](const std::string& l) {
    if (l.find("plain channel") == std::string::npos) log.push_back(l);
  });
  JournalDb jdb(db);
  NoExtendedChannel ch(fleet.endpoints()[0], NoExtendedChannel::Mode::Refuse);
  const auto r = p.personalize(ch, jdb);
  INFO(r.error);
  CHECK(r.in_outbox);
  CHECK(ch.refused == 1);
  CHECK(count_ins(ch.sent, core::applet::ins::get_data, true) == 0);
  CHECK(log.size() == 1);
}

TEST_CASE("an extended STORE DATA refused is never sent again in short form; the claim resumes short") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_flow_store");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 2);
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  Personalizer p(cfg, keys, nullptr);
  std::vector<std::string> log;
  // The plain channel is said for every device; these tests count the other notes.
  p.set_log([&log](const std::string& l) {
    if (l.find("plain channel") == std::string::npos) log.push_back(l);
  });
  JournalDb jdb(db);
  NoExtendedChannel ch(fleet.endpoints()[0], NoExtendedChannel::Mode::StoreOnly);
  const auto r = p.personalize(ch, jdb);
  CHECK(r.reached == Step::Store);
  CHECK(r.error_code == static_cast<int>(core::ErrorCode::ExtendedLengthRefused));
  CHECK(count_ins(ch.sent, core::applet::ins::store_data, false) == 0);  // no short retry in this session
  CHECK(count_ins(ch.sent, core::applet::ins::get_data, true) == 1);     // the probe went through
  CHECK_FALSE(ch.extended_length());
  CHECK(journal_state(db, r.chip_id) == "issued");  // not voided: the device refused no content
  CHECK(log.size() == 1);

  // The next session on the same channel stores the whole package in short APDUs, same IMEI.
  const auto r2 = p.personalize(ch, jdb);
  INFO(r2.error);
  CHECK(r2.in_outbox);
  CHECK(r2.imei == r.imei);
  CHECK(count_ins(ch.sent, core::applet::ins::store_data, false) > 1);
  CHECK(ch.refused == 1);
  CHECK(ch.asked_extended_when_off == 0);
}

TEST_CASE("short_apdus set or a channel without extended length: no extended APDU is sent at all") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_flow_short");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 2);
  Fleet fleet(2, pki_path(cfg, pki_file::root));
  std::vector<std::string> log;
  JournalDb jdb(db);
  {
    StationConfig shortcfg = cfg;
    shortcfg.short_apdus = true;
    Personalizer p(shortcfg, keys, nullptr);
    // The plain channel is said for every device; these tests count the other notes.
    p.set_log([&log](const std::string& l) {
    if (l.find("plain channel") == std::string::npos) log.push_back(l);
  });
    NoExtendedChannel ch(fleet.endpoints()[0], NoExtendedChannel::Mode::Answer6700);
    const auto r = p.personalize(ch, jdb);
    INFO(r.error);
    CHECK(r.in_outbox);
    CHECK(ch.refused == 0);  // nothing in extended form was sent
    CHECK(ch.asked_extended_when_off == 0);
    CHECK_FALSE(ch.extended_length());
  }
  {
    // The real TCP link with extended length turned off by its owner: the short path end to end.
    Personalizer p(cfg, keys, nullptr);
    // The plain channel is said for every device; these tests count the other notes.
    p.set_log([&log](const std::string& l) {
    if (l.find("plain channel") == std::string::npos) log.push_back(l);
  });
    auto link = core::open_device_channel(fleet.endpoints()[1]);
    link->disable_extended_length();
    const auto r = p.personalize(*link, jdb);
    INFO(r.error);
    CHECK(r.in_outbox);
  }
  CHECK(log.empty());  // nothing fell back: nothing was refused
}

TEST_CASE("GET DATA backup refused for its length is sent again short; STORE DATA went extended before it") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_flow_backup");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 2);
  Fleet fleet(1, pki_path(cfg, pki_file::root));
  Personalizer p(cfg, keys, nullptr);
  std::vector<std::string> log;
  // The plain channel is said for every device; these tests count the other notes.
  p.set_log([&log](const std::string& l) {
    if (l.find("plain channel") == std::string::npos) log.push_back(l);
  });
  JournalDb jdb(db);
  NoExtendedChannel ch(fleet.endpoints()[0], NoExtendedChannel::Mode::BackupOnly);
  const auto r = p.personalize(ch, jdb);
  INFO(r.error);
  CHECK(r.in_outbox);
  CHECK(ch.sent_refused == std::vector<std::uint8_t>{core::applet::ins::get_data});
  CHECK(count_ins(ch.sent, core::applet::ins::store_data, true) == 1);  // one extended block
  CHECK(count_ins(ch.sent, core::applet::ins::get_data, true) == 1);    // the probe
  CHECK(ch.asked_extended_when_off == 0);                               // the drill went short
  CHECK(log.size() == 1);
}

TEST_CASE("a device served with --no-extended over TCP: personalized in short APDUs, the fall back said once") {
  const auto cfg = station_config();
  auto db = fresh_station_db("st_flow_noext");
  auto keys = StationKeys::open(cfg, 2);
  pool_generate_imeis(db, "35780502", 4);
  Fleet fleet(2, pki_path(cfg, pki_file::root), "--no-extended");
  Personalizer p(cfg, keys, nullptr);
  std::vector<std::string> log;
  // The plain channel is said for every device; these tests count the other notes.
  p.set_log([&log](const std::string& l) {
    if (l.find("plain channel") == std::string::npos) log.push_back(l);
  });
  for (const auto& device : fleet.endpoints()) {
    const auto r = p.personalize(device, db);  // the address overload, as `personalize --device` calls it
    INFO(r.error);
    CHECK(r.in_outbox);
    CHECK(r.error_code == static_cast<int>(errc::PublishPending));
    CHECK(r.endpoint == device);
  }
  // Once per address: two devices, two lines; the same device again, no new line.
  CHECK(log.size() == 2);
  const auto again = p.personalize(fleet.endpoints()[0], db);
  CHECK(again.in_outbox);
  CHECK(log.size() == 2);
  CHECK(count(db, "SELECT count(*) FROM journal.device WHERE state = 'void'") == 0);
}
