// The device's side of the service channel (docs/service.md "The device side"): a personalized
// keyline-device applet (device-emu's Session, the code `serve` and `service-agent` run) against a
// host built from core's SCP03 functions, as keyline-service drives it. A whole session (an item and
// a module, survive a reboot, GET STATUS), then the attacks: a recorded script replayed, one changed
// byte, a module from another signer, without codeSigning, older or equal; PUT KEY, after which the
// old key opens nothing; KVN from the package header's master version.
#include <botan/auto_rng.h>
#include <botan/curve25519.h>
#include <botan/ecdsa.h>
#include <botan/pkcs8.h>
#include <botan/pubkey.h>
#include <botan/x509_ca.h>
#include <botan/x509_ext.h>
#include <botan/x509self.h>
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <set>

#include "keyline/core/apdu.h"
#include "keyline/core/applet_protocol.h"
#include "keyline/core/cert_profile.h"
#include "keyline/core/data_package.h"
#include "keyline/core/dgi.h"
#include "keyline/core/flash_image.h"
#include "keyline/core/hpke.h"
#include "keyline/core/scp03_session.h"
#include "keyline/core/service_module.h"
#include "keyline/device/applet.h"
#include "keyline/device/service_agent.h"
#include "keyline/device/service_store.h"
#include "service_pki.h"
#include "testenv.h"

using namespace keyline;
namespace fs = std::filesystem;
using core::Bytes;
using core::SecureBytes;
using test::Manufacturer;
using test::Scratch;

namespace {

core::CommandApdu cmd(std::uint8_t ins, std::uint8_t p1, std::uint8_t p2, const SecureBytes& data = {}) {
  core::CommandApdu c;
  c.cla = 0x80;
  c.ins = ins;
  c.p1 = p1;
  c.p2 = p2;
  c.data = data;
  c.le = 256;
  return c;
}

// A personalized device and the host's view of it.
struct Rig {
  Scratch tmp;
  Manufacturer maker;
  fs::path dir = tmp.path() / "dev";
  core::DataPackage pkg;
  std::unique_ptr<device::Device> dev;
  std::vector<Bytes> wire;  // every C-APDU sent, as keyline-service would have sent it

  explicit Rig(std::uint8_t master_version = 1) {
    maker.write_root(tmp.path() / "root.pem");
    std::set<std::string> taken;
    const auto chip = device::make_device(dir, tmp.path() / "root.pem", taken);
    pkg = maker.package_for(chip, "490154203237518");
    pkg.master_version = master_version;
    reboot();
    device::Session s(*dev);
    REQUIRE(send(s, core::applet::select_command()).sw == core::sw::ok);
    const SecureBytes enc = pkg.encode();
    for (std::size_t off = 0, n = 0; off < enc.size(); off += 200, ++n) {
      const std::size_t len = std::min<std::size_t>(200, enc.size() - off);
      const bool last = off + len == enc.size();
      const auto r = send(s, cmd(0xE2, last ? 0x88 : 0x08, static_cast<std::uint8_t>(n),
                                 SecureBytes(enc.begin() + off, enc.begin() + off + len)));
      REQUIRE(r.sw == core::sw::ok);
    }
    REQUIRE(dev->chip().lifecycle() == device::Lifecycle::Personalized);
    wire.clear();
  }
  void reboot() { dev = std::make_unique<device::Device>(device::Chip::load(dir), device::DeviceOptions{}); }

  core::ResponseApdu send_raw(device::Session& s, const Bytes& apdu) {
    wire.push_back(apdu);
    const SecureBytes r = s.process(apdu.data(), apdu.size());
    auto out = core::decode_response(r);
    SecureBytes data = out.data;
    while (out.sw1() == 0x61) {  // as the agent does (service_agent.cpp)
      const Bytes get = {0x00, 0xC0, 0x00, 0x00, out.sw2()};
      out = core::decode_response(s.process(get.data(), get.size()));
      data.insert(data.end(), out.data.begin(), out.data.end());
    }
    out.data = data;
    return out;
  }
  core::ResponseApdu send(device::Session& s, const core::CommandApdu& c) {
    const SecureBytes e = core::encode_command(c);
    return send_raw(s, Bytes(e.begin(), e.end()));
  }

  // SELECT, INITIALIZE UPDATE and EXTERNAL AUTHENTICATE with `comm`'s static keys, as the service does.
  std::optional<core::scp::SecureMessaging> open(device::Session& s, const SecureBytes& comm,
                                                 std::uint8_t kvn, std::uint16_t* iu_sw = nullptr) {
    REQUIRE(send(s, core::applet::select_command()).sw == core::sw::ok);
    Bytes host(16);
    maker.rng().randomize(host.data(), host.size());
    const auto iu = send(s, core::scp::initialize_update_command(kvn, host));
    if (iu_sw) *iu_sw = iu.sw;
    if (iu.sw != core::sw::ok) return std::nullopt;
    const auto answer = core::scp::parse_initialize_update_answer(iu.data.data(), iu.data.size());
    CHECK(answer.kdd == Bytes(dev->chip().chip_id().bytes().begin(), dev->chip().chip_id().bytes().end()));
    const auto statics = core::scp::static_keys_from_comm(comm);
    const auto keys =
        core::scp::derive_scp03_session(core::scp::software_cmac(statics), 16, host, answer.card_challenge);
    try {
      auto auth = core::scp::host_authenticate(keys, host, answer, 16);
      REQUIRE(send(s, auth.external_authenticate).sw == core::sw::ok);
      return std::move(auth.session);
    } catch (const core::scp::SecureChannelError&) {
      if (iu_sw) *iu_sw = 0x6982;  // the card cryptogram: the card holds another key
      return std::nullopt;
    }
  }

  // Sends `plain` wrapped; returns the unwrapped answer.
  core::ResponseApdu secured(device::Session& s, core::scp::SecureMessaging& sm,
                             const core::CommandApdu& plain) {
    return sm.unwrap_response(send(s, sm.wrap_command(plain)));
  }
  // Blocks as keyline-service cuts them (service/src/commands.cpp): P1 b8 on the last, P2 = number.
  std::uint16_t blocks(device::Session& s, core::scp::SecureMessaging& sm, std::uint8_t ins,
                       std::uint8_t format, const Bytes& all) {
    std::uint16_t sw = 0;
    for (std::size_t off = 0, n = 0; off < all.size(); off += 200, ++n) {
      const std::size_t len = std::min<std::size_t>(200, all.size() - off);
      const bool last = off + len == all.size();
      sw = secured(s, sm,
                   cmd(ins, static_cast<std::uint8_t>(format | (last ? 0x80 : 0)),
                       static_cast<std::uint8_t>(n), SecureBytes(all.begin() + off, all.begin() + off + len)))
               .sw;
      if (sw != core::sw::ok) break;
    }
    return sw;
  }
  std::uint16_t store_item(device::Session& s, core::scp::SecureMessaging& sm, std::uint16_t tag,
                           const Bytes& value) {
    SecureBytes dgi;
    core::encode_dgi(dgi, tag, value.data(), value.size());
    return blocks(s, sm, 0xE2, 0x08, Bytes(dgi.begin(), dgi.end()));
  }
  Bytes module(const std::string& name, std::uint32_t version, const Manufacturer::Signer& signer,
               std::size_t size = 700) {
    Bytes body(size);
    for (std::size_t i = 0; i < size; ++i) body[i] = static_cast<std::uint8_t>(i * 7 + version);
    return core::service::encode_module(
        core::service::sign_module(name, version, body, signer.pkcs8, signer.cert_der, maker.rng()));
  }
  std::uint16_t load(device::Session& s, core::scp::SecureMessaging& sm, const Bytes& module) {
    return blocks(s, sm, 0xE8, 0x00, module);
  }
  core::service::DeviceStatus status(device::Session& s, core::scp::SecureMessaging& sm) {
    const auto r = secured(s, sm, cmd(0xF2, 0x00, 0x00));
    REQUIRE(r.sw == core::sw::ok);
    return core::service::parse_device_status(r.data.data(), r.data.size());
  }
};

}  // namespace

TEST_CASE("a whole session: an item and a module applied, GET STATUS, both survive a reboot") {
  Rig rig;
  const auto signer = rig.maker.code_signer();
  {
    device::Session s(*rig.dev);
    auto sm = rig.open(s, rig.pkg.comm_key, 1);
    REQUIRE(sm);
    CHECK(rig.store_item(s, *sm, 0x0F10, {'o', 'n'}) == core::sw::ok);
    CHECK(rig.load(s, *sm, rig.module("fw.main", 7, signer, 3000)) == core::sw::ok);
    const auto st = rig.status(s, *sm);
    CHECK(st.imei == "490154203237518");
    CHECK(st.lifecycle == 0x0F);
    CHECK(st.kvn == 1);
    REQUIRE(st.modules.size() == 1);
    CHECK(st.modules[0].name == "fw.main");
    CHECK(st.modules[0].version == 7);
    REQUIRE(st.items.size() == 1);
    CHECK(st.items[0].tag == 0x0F10);
  }
  rig.reboot();
  const auto chip = device::Chip::load(rig.dir);
  CHECK(device::boot_offline(rig.dir).imei.str() == "490154203237518");
  const auto mods = device::installed_modules(chip);
  REQUIRE(mods.modules.size() == 1);
  CHECK(mods.modules[0].version == 7);
  CHECK(device::load_items(rig.dir).at(0x0F10) == Bytes{'o', 'n'});
  // keyline-device boot prints them (the binary, as an operator runs it).
  const std::string bin = test::binary_dir() + "/bin/keyline-device boot --dir " + rig.dir.string();
  FILE* p = ::popen(bin.c_str(), "r");
  REQUIRE(p);
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  CHECK(::pclose(p) == 0);
  CHECK(out.find("module fw.main 7\n") != std::string::npos);
  CHECK(out.find("item 0F10 ") != std::string::npos);
  CHECK(out.find("kvn 1\n") != std::string::npos);
  // Not in the sealed backup: the flash image's package is the station's, without the item.
  const auto image = device::read_bytes(chip.paths().image());
  const auto flash = core::FlashImage::decode(*image);
  CHECK(core::DataPackage::decode(chip.open(flash.backup)).app_items.empty());
}

TEST_CASE("a recorded script replayed: the card's counter moved on, nothing is applied") {
  Rig rig;
  std::vector<Bytes> script;
  {
    device::Session s(*rig.dev);
    auto sm = rig.open(s, rig.pkg.comm_key, 1);
    REQUIRE(sm);
    REQUIRE(rig.store_item(s, *sm, 0x0F20, {'v', '1'}) == core::sw::ok);
    script = rig.wire;
  }
  // The operator changes the item; an attacker replays the recorded session to set it back.
  {
    device::Session s(*rig.dev);
    auto sm = rig.open(s, rig.pkg.comm_key, 1);
    REQUIRE(sm);
    REQUIRE(rig.store_item(s, *sm, 0x0F20, {'v', '2'}) == core::sw::ok);
  }
  rig.reboot();  // the counter is durable: a restart does not hand out an old card challenge again
  device::Session s(*rig.dev);
  std::vector<std::uint16_t> sws;
  for (const auto& apdu : script) sws.push_back(rig.send_raw(s, apdu).sw);
  REQUIRE(sws.size() == 4);  // SELECT, INITIALIZE UPDATE, EXTERNAL AUTHENTICATE, STORE DATA
  CHECK(sws[0] == core::sw::ok);
  CHECK(sws[1] == core::sw::ok);  // a fresh card challenge from the next counter value
  CHECK(sws[2] == core::sw::security_not_satisfied);
  CHECK(sws[3] == core::sw::security_not_satisfied);
  CHECK(device::load_items(rig.dir).at(0x0F20) == Bytes{'v', '2'});
}

TEST_CASE("one changed byte ends the session: that command and every later one applies nothing") {
  Rig rig;
  device::Session s(*rig.dev);
  auto sm = rig.open(s, rig.pkg.comm_key, 1);
  REQUIRE(sm);
  SecureBytes dgi;
  core::encode_dgi(dgi, 0x0F30, Bytes{'x'}.data(), 1);
  auto wrapped = sm->wrap_command(cmd(0xE2, 0x88, 0x00, dgi));
  wrapped.data[3] ^= 0x01;
  const auto refused = rig.send(s, wrapped);
  CHECK(refused.sw == core::sw::security_not_satisfied);
  CHECK(refused.data.empty());
  sm->unwrap_response(refused);  // an error without data carries no R-MAC (Amendment D section 6.2.5)
  // The host's next command under the same session: the card has forgotten its keys.
  CHECK(rig.send(s, sm->wrap_command(cmd(0xE2, 0x88, 0x00, dgi))).sw == core::sw::security_not_satisfied);
  CHECK(device::load_items(rig.dir).count(0x0F30) == 0);
  CHECK(!s.service_channel_open());
}

TEST_CASE("LOAD MODULE refuses another signer, a signer without codeSigning, an older or equal version") {
  Rig rig;
  const auto good = rig.maker.code_signer();
  Manufacturer other;
  const auto foreign = other.code_signer();
  const auto tls = rig.maker.code_signer(Botan::OID("1.3.6.1.5.5.7.3.1"));  // serverAuth
  device::Session s(*rig.dev);
  auto sm = rig.open(s, rig.pkg.comm_key, 1);
  REQUIRE(sm);
  CHECK(rig.load(s, *sm, rig.module("fw.main", 5, good)) == core::sw::ok);
  CHECK(rig.load(s, *sm, rig.module("fw.main", 9, foreign)) == core::sw::security_not_satisfied);
  CHECK(rig.load(s, *sm, rig.module("fw.main", 9, tls)) == core::sw::security_not_satisfied);
  CHECK(rig.load(s, *sm, rig.module("fw.main", 4, good)) == core::sw::conditions_not_satisfied);
  CHECK(rig.load(s, *sm, rig.module("fw.main", 5, good)) == core::sw::conditions_not_satisfied);
  // A body changed after signing.
  Bytes changed = rig.module("fw.main", 9, good);
  changed[40] ^= 0x01;
  CHECK(rig.load(s, *sm, changed) == core::sw::security_not_satisfied);
  CHECK(rig.load(s, *sm, rig.module("fw.other", 1, good)) == core::sw::ok);
  const auto st = rig.status(s, *sm);
  REQUIRE(st.modules.size() == 2);
  CHECK(st.modules[0].name == "fw.main");
  CHECK(st.modules[0].version == 5);
  // A module file changed in flash is not booted.
  const device::ServicePaths sp{rig.dir};
  auto file = *device::read_bytes(sp.module("fw.other"));
  file[file.size() - 100] ^= 0x01;
  device::write_atomic(sp.module("fw.other"), file.data(), file.size());
  const auto mods = device::installed_modules(device::Chip::load(rig.dir));
  CHECK(mods.modules.size() == 1);
  CHECK(mods.rejected == std::vector<std::string>{"fw.other.mod"});
}

TEST_CASE("PUT KEY rotates the communication key: the old key no longer opens a session, the new one does") {
  Rig rig;
  SecureBytes next(32);
  rig.maker.rng().randomize(next.data(), next.size());
  {
    device::Session s(*rig.dev);
    auto sm = rig.open(s, rig.pkg.comm_key, 1);
    REQUIRE(sm);
    const auto r = rig.secured(s, *sm, core::scp::put_comm_key_command(sm->dek(), 1, 2, next));
    REQUIRE(r.sw == core::sw::ok);
    CHECK(r.data.size() == 4);
    CHECK(r.data[0] == 2);
    // A second PUT KEY back to version 1 in the same session: refused (the session's KVN is 1, new <= it).
    CHECK(rig.secured(s, *sm, core::scp::put_comm_key_command(sm->dek(), 1, 1, rig.pkg.comm_key)).sw ==
          core::sw::wrong_data);
  }
  rig.reboot();
  device::Session s(*rig.dev);
  std::uint16_t sw = 0;
  CHECK(!rig.open(s, rig.pkg.comm_key, 1, &sw));
  CHECK(sw == core::sw::referenced_data_not_found);  // KVN 1 is gone
  CHECK(!rig.open(s, rig.pkg.comm_key, 0, &sw));
  CHECK(sw == 0x6982);  // KVN "any": the card answers with the new key, the old one fails its cryptogram
  auto sm = rig.open(s, next, 2);
  REQUIRE(sm);
  CHECK(rig.status(s, *sm).kvn == 2);

  SUBCASE("a PUT KEY under a wrong DEK is refused and the key stays") {
    SecureBytes third(32, 0x77);
    CHECK(rig.secured(s, *sm, core::scp::put_comm_key_command(SecureBytes(16, 0x01), 2, 3, third)).sw ==
          core::sw::wrong_data);
    CHECK(device::current_comm_key(device::Chip::load(rig.dir))->comm == next);
  }
}

TEST_CASE("a package of master version 2: the device answers INITIALIZE UPDATE with KVN 2") {
  Rig rig(2);
  device::Session s(*rig.dev);
  std::uint16_t sw = 0;
  CHECK(!rig.open(s, rig.pkg.comm_key, 1, &sw));
  CHECK(sw == core::sw::referenced_data_not_found);
  auto sm = rig.open(s, rig.pkg.comm_key, 2);
  REQUIRE(sm);
  CHECK(rig.status(s, *sm).kvn == 2);
}

TEST_CASE("the service channel needs a personalized, selected device and a 16-byte challenge") {
  Scratch tmp;
  Manufacturer maker;
  maker.write_root(tmp.path() / "root.pem");
  std::set<std::string> taken;
  device::make_device(tmp.path() / "blank", tmp.path() / "root.pem", taken);
  device::Device dev(device::Chip::load(tmp.path() / "blank"), {});
  device::Session s(dev);
  const auto run = [&](const core::CommandApdu& c) {
    const SecureBytes e = core::encode_command(c);
    return core::decode_response(s.process(e.data(), e.size()));
  };
  CHECK(run(core::scp::initialize_update_command(1, Bytes(16, 1))).sw == core::sw::conditions_not_satisfied);
  REQUIRE(run(core::applet::select_command()).sw == core::sw::ok);
  CHECK(run(core::scp::initialize_update_command(1, Bytes(16, 1))).sw == core::sw::conditions_not_satisfied);
  // Commands of the service channel outside it.
  CHECK(run(cmd(0xF2, 0x00, 0x00)).sw != core::sw::ok);
  CHECK(run(cmd(0xE8, 0x80, 0x00, SecureBytes(10, 1))).sw == core::sw::ins_not_supported);
}

TEST_CASE("service-agent's batch runner stops at the first answer that is not 9000") {
  Rig rig;
  device::Session s(*rig.dev);
  const auto hex = [](const core::CommandApdu& c) {
    const SecureBytes e = core::encode_command(c);
    return core::to_hex(e.data(), e.size());
  };
  const auto answers = device::run_batch(
      s, {hex(core::applet::select_command()), hex(cmd(0x50, 0x01, 0x00, SecureBytes(8, 1))),
          hex(core::applet::select_command())});
  REQUIRE(answers.size() == 2);
  CHECK(answers[0].substr(answers[0].size() - 4) == "9000");
  CHECK(answers[1] == "6700");
}

TEST_CASE("service-agent passes no plain personalization, recovery or reset command from the network") {
  Rig rig;
  device::Session s(*rig.dev);
  const auto hex = [](const core::CommandApdu& c) {
    const SecureBytes e = core::encode_command(c);
    return core::to_hex(e.data(), e.size());
  };
  const auto before = *device::read_bytes(rig.dev->chip().paths().image());
  // UPDATE BINARY of a staged image, then BOOT STAGED: what a hostile server would try.
  core::CommandApdu update = cmd(0xD6, 0x00, 0x00, SecureBytes(before.begin(), before.begin() + 100));
  update.cla = 0x00;
  const auto answers =
      device::run_batch(s, {hex(core::applet::select_command()), hex(update), hex(cmd(0xC2, 0, 0))});
  REQUIRE(answers.size() == 2);
  CHECK(answers[1] == "6982");
  CHECK(!device::read_bytes(device::DevicePaths{rig.dir}.staging()));
  CHECK(device::run_batch(s, {hex(cmd(0xC8, 0x00, 0x00))}) ==
        std::vector<std::string>{"6982"});  // RESET TO BLANK
  CHECK(device::Chip::load(rig.dir).lifecycle() == device::Lifecycle::Personalized);
}

TEST_CASE(
    "service-agent open: a message sealed to this device's transport key opens; another device's does not") {
  Rig rig;
  const Botan::X509_Certificate transport(rig.pkg.transport_cert);
  const auto pk = transport.subject_public_key_bitstring();
  const std::string info = device::kMessageInfo, imei = rig.pkg.imei.str();
  const Bytes msg = {'h', 'e', 'l', 'l', 'o'};
  const Bytes sealed =
      core::hpke::seal(pk, Bytes(info.begin(), info.end()), Bytes(imei.begin(), imei.end()), msg);
  CHECK(device::open_message(rig.dir.string(), sealed) == SecureBytes(msg.begin(), msg.end()));
  Bytes changed = sealed;
  changed.back() ^= 0x01;
  CHECK_THROWS_AS(device::open_message(rig.dir.string(), changed), core::CryptoError);
  const Bytes other = core::hpke::seal(pk, Bytes(info.begin(), info.end()), Bytes(15, '0'), msg);
  CHECK_THROWS_AS(device::open_message(rig.dir.string(), other), core::CryptoError);
}

TEST_CASE("GET STATUS lists modules by name whatever their file names' order") {
  Rig rig;
  const auto signer = rig.maker.code_signer();
  device::Session s(*rig.dev);
  auto sm = rig.open(s, rig.pkg.comm_key, 1);
  REQUIRE(sm);
  REQUIRE(rig.load(s, *sm, rig.module("fw-x", 1, signer)) == core::sw::ok);
  REQUIRE(rig.load(s, *sm, rig.module("fw", 2, signer)) == core::sw::ok);  // "fw-x.mod" sorts before "fw.mod"
  const auto st = rig.status(s, *sm);
  REQUIRE(st.modules.size() == 2);
  CHECK(st.modules[0].name == "fw");
  CHECK(st.modules[1].name == "fw-x");
}
