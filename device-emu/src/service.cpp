// The device's side of the service channel (docs/service.md "The device side", docs/protocol.md
// "Service channel commands"): SCP03 INITIALIZE UPDATE / EXTERNAL AUTHENTICATE (GlobalPlatform Card
// Specification v2.3 Amendment D) keyed by static keys derived from the communication key, then
// STORE DATA of configuration items, LOAD MODULE, PUT KEY and GET STATUS, each only under it.
#include <botan/system_rng.h>

#include "keyline/core/scp03_session.h"
#include "keyline/core/service_module.h"
#include "keyline/device/applet.h"
#include "keyline/device/log.h"
#include "keyline/device/service_store.h"

namespace keyline::device {

namespace {

constexpr std::size_t kS16 = 16;
constexpr std::uint8_t kInsLoadModule = 0xE8;
constexpr std::uint8_t kInsGetStatus = 0xF2;
// STORE DATA P1 (GP Card Specification section 11.11.2.1): b8 last block, b5-b4 = 01 DGI format.
constexpr std::uint8_t kLastBlock = 0x80;
constexpr std::uint8_t kStoreDataDgiFormat = 0x08;
// A whole module with its header, signature and certificate.
constexpr std::size_t kMaxModuleBytes =
    core::service::kMaxModuleBody + core::service::kMaxModuleCertificate + 256;

core::ResponseApdu sw_only(std::uint16_t sw) {
  core::ResponseApdu r;
  r.sw = sw;
  return r;
}

}  // namespace

struct Session::Scp03Pending {
  core::scp::CardInitialize init;
  core::Bytes host_challenge;
  std::uint8_t kvn = 0;
};

// 80 50 KVN 00 10 host challenge 00: a PERSONALIZED device answers with its KDD (chip ID), KVN and
// the card challenge from its durable sequence counter. KVN 00 takes the current key.
core::ResponseApdu Session::initialize_update(const core::CommandApdu& c) {
  Chip& chip = m_device.m_chip;
  end_channel();
  if (!m_selected || m_secured || chip.lifecycle() != Lifecycle::Personalized)
    return sw_only(core::sw::conditions_not_satisfied);
  if (c.p2 != 0x00) return sw_only(core::sw::incorrect_p1p2);
  if (c.data.size() != kS16) return sw_only(core::sw::wrong_length);
  const auto key = current_comm_key(chip);
  if (!key) return sw_only(core::sw::conditions_not_satisfied);
  if (c.p1 != 0x00 && c.p1 != key->kvn) return sw_only(core::sw::referenced_data_not_found);
  const auto statics = core::scp::static_keys_from_comm(key->comm);
  const std::uint32_t counter = next_sequence_counter(chip.paths().dir);
  auto pending = std::make_shared<Scp03Pending>();
  pending->host_challenge.assign(c.data.begin(), c.data.end());
  pending->kvn = key->kvn;
  pending->init = core::scp::card_initialize(
      statics, key->kvn, chip.chip_id(), pending->host_challenge, counter,
      core::Bytes(std::begin(core::applet::kAid), std::end(core::applet::kAid)), kS16);
  const core::Bytes answer = core::scp::encode_initialize_update_answer(pending->init.answer);
  m_scp03 = std::move(pending);
  core::ResponseApdu r;
  r.data.assign(answer.begin(), answer.end());
  return r;
}

// 84 82 33 00 20 host cryptogram || C-MAC: exactly once after INITIALIZE UPDATE, level 33 only.
core::ResponseApdu Session::external_authenticate(const core::CommandApdu& c) {
  const auto pending = std::move(m_scp03);
  m_scp03.reset();
  try {
    auto session = core::scp::card_authenticate(pending->init, pending->host_challenge, c, kS16);
    m_channel.emplace(std::move(session));
  } catch (const core::Error& e) {
    log_line(m_device.m_chip.chip_id().str(), std::string("service channel refused: ") + e.what());
    return sw_only(core::sw::security_not_satisfied);
  }
  m_service = true;
  m_service_kvn = pending->kvn;
  log_line(m_device.m_chip.chip_id().str(),
           "service channel open (SCP03, KVN " + std::to_string(pending->kvn) + ")");
  return sw_only(core::sw::ok);
}

core::ResponseApdu Session::service_dispatch(const core::CommandApdu& c) {
  if (c.cla != 0x80) return sw_only(core::sw::cla_not_supported);
  if (c.ins == core::applet::ins::store_data || c.ins == kInsLoadModule) return service_gather(c);
  // Any other command ends a half-sent STORE DATA or LOAD MODULE: nothing of it is applied.
  drop_store();
  drop_chain();
  switch (c.ins) {
    case core::scp::kInsPutKey:
      return service_put_key(c);
    case kInsGetStatus:
      return service_get_status(c);
    default:
      return sw_only(core::sw::ins_not_supported);
  }
}

// GP Card Specification section 11.11.2 (STORE DATA) and 11.6.2 (LOAD): P1 b8 marks the last block,
// P2 numbers the blocks from 00. STORE DATA P1 says DGI format (08); LOAD MODULE's P1 is 00.
core::ResponseApdu Session::service_gather(const core::CommandApdu& c) {
  const std::uint8_t format = c.ins == core::applet::ins::store_data ? kStoreDataDgiFormat : 0x00;
  const bool continues = m_storing && m_chain_ins == c.ins;
  if ((c.p1 & 0x7F) != format || c.p2 != (continues ? m_next_block : 0)) {
    drop_store();
    drop_chain();
    return sw_only((c.p1 & 0x7F) != format ? core::sw::incorrect_p1p2 : core::sw::conditions_not_satisfied);
  }
  if (!continues) drop_store();
  if (m_store.size() + c.data.size() > kMaxModuleBytes) {
    drop_store();
    drop_chain();
    return sw_only(core::sw::wrong_length);
  }
  m_store.insert(m_store.end(), c.data.begin(), c.data.end());
  m_storing = true;
  m_chain_ins = c.ins;
  ++m_next_block;
  if (!(c.p1 & kLastBlock)) return sw_only(core::sw::ok);
  core::SecureBytes whole;
  whole.swap(m_store);
  drop_store();
  m_chain_ins.reset();
  if (c.ins == kInsLoadModule) return service_load_module(core::Bytes(whole.begin(), whole.end()));
  return service_store_items(whole);
}

// STORE DATA: one or more DGIs 0F01..0FFF, applied together or not at all.
core::ResponseApdu Session::service_store_items(const core::SecureBytes& dgis) {
  std::map<std::uint16_t, core::Bytes> items;
  try {
    for (const auto& d : core::decode_dgis(dgis)) {
      if (d.tag < core::dgi_tag::app_first || d.tag > core::dgi_tag::app_last || items.count(d.tag))
        return sw_only(core::sw::wrong_data);
      items[d.tag] = core::Bytes(d.value.begin(), d.value.end());
    }
  } catch (const core::FormatError&) {
    return sw_only(core::sw::wrong_data);
  }
  if (items.empty()) return sw_only(core::sw::wrong_data);
  apply_items(m_device.m_chip.paths().dir, items);
  return sw_only(core::sw::ok);
}

// LOAD MODULE (INS E8): the module of core/service_module.h, verified before it is stored.
core::ResponseApdu Session::service_load_module(const core::Bytes& whole) {
  core::service::Module m;
  const auto refusal = install_module(m_device.m_chip, whole, &m);
  const std::string& chip = m_device.m_chip.chip_id().str();
  switch (refusal) {
    case ModuleRefusal::Malformed:
      return sw_only(core::sw::wrong_data);
    case ModuleRefusal::NotTrusted:
      log_line(chip, "module refused: its signer does not chain to the ROM root as code signer");
      return sw_only(core::sw::security_not_satisfied);
    case ModuleRefusal::Downgrade:
      log_line(chip, "module refused: not newer than the installed version");
      return sw_only(core::sw::conditions_not_satisfied);
    case ModuleRefusal::None:
      break;
  }
  log_line(chip, "module " + m.name + " version " + std::to_string(m.version) + " installed");
  return sw_only(core::sw::ok);
}

// PUT KEY (GP INS D8, P1 = current KVN): the new communication key under the session DEK; stored
// durably before the answer, the next INITIALIZE UPDATE opens only with it.
core::ResponseApdu Session::service_put_key(const core::CommandApdu& c) {
  if (c.p1 != m_service_kvn) return sw_only(core::sw::referenced_data_not_found);
  core::scp::PutCommKey put;
  try {
    put = core::scp::parse_put_comm_key(m_channel->dek(), c);
  } catch (const core::FormatError&) {
    return sw_only(core::sw::wrong_data);
  }
  // No key roll-back: a KVN is a derivation version, and versions only go up (docs/service.md).
  if (put.new_kvn <= m_service_kvn) return sw_only(core::sw::wrong_data);
  store_comm_key(m_device.m_chip.paths().dir, {put.new_kvn, put.comm});
  log_line(m_device.m_chip.chip_id().str(),
           "communication key rotated to KVN " + std::to_string(put.new_kvn));
  core::ResponseApdu r;
  const core::Bytes kcv = core::key_check_value(put.comm);
  r.data.push_back(put.new_kvn);
  r.data.insert(r.data.end(), kcv.begin(), kcv.end());
  return r;
}

// GET STATUS 80 F2 00 00: the proprietary TLV answer of core/service_module.h.
core::ResponseApdu Session::service_get_status(const core::CommandApdu& c) {
  if (c.p1 != 0x00 || c.p2 != 0x00) return sw_only(core::sw::incorrect_p1p2);
  const core::Bytes s = core::service::encode_device_status(service_status(m_device.m_chip));
  core::ResponseApdu r;
  r.data.assign(s.begin(), s.end());
  return r;
}

}  // namespace keyline::device
