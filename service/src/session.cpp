#include "session.h"

#include "commands.h"
#include "keyline/core/applet_protocol.h"
#include "keyline/core/http.h"
#include "keyline/core/service_module.h"
#include "keyline/service/errors.h"
#include "static_keys.h"

namespace keyline::service {
namespace {

constexpr std::size_t kS16 = 16;  // S16: 16-byte challenges, cryptograms and MACs (docs/service.md)
constexpr std::size_t kNoJob = static_cast<std::size_t>(-1);

std::string sw_hex(std::uint16_t sw) {
  return core::to_hex(Bytes{static_cast<std::uint8_t>(sw >> 8), static_cast<std::uint8_t>(sw)});
}
std::string q(const std::string& s) { return "\"" + core::http::json_escape(s) + "\""; }
std::string dgi_hex(std::uint16_t dgi) { return sw_hex(dgi); }

// GP Amendment D section 6.2.5 (core/scp03.h unwrap_response): an answer with no data and a status
// word other than 9000, 62XX or 63XX carries no R-MAC, so the device and anyone relaying its answers
// (the agent, a TLS-terminating proxy) could equally have written it.
bool carries_rmac(const core::ResponseApdu& wrapped) {
  const auto sw1 = static_cast<std::uint8_t>(wrapped.sw >> 8);
  return !wrapped.data.empty() || wrapped.sw == core::sw::ok || sw1 == 0x62 || sw1 == 0x63;
}

}  // namespace

HostSession::HostSession(core::ChipId chip, int kvn, std::vector<Job> jobs, core::Bytes host_challenge,
                         CommSource comm)
    : m_chip(chip),
      m_kvn(kvn),
      m_jobs(std::move(jobs)),
      m_host_challenge(std::move(host_challenge)),
      m_comm(std::move(comm)) {}

std::vector<core::CommandApdu> HostSession::first_batch() const {
  return {core::applet::select_command(),
          core::scp::initialize_update_command(static_cast<std::uint8_t>(m_kvn), m_host_challenge)};
}

std::optional<std::vector<core::CommandApdu>> HostSession::second_batch(
    const std::vector<core::ResponseApdu>& answers, const KeyOpener& open_keys) {
  if (answers.size() != 2 || answers[0].sw != core::sw::ok || answers[1].sw != core::sw::ok) {
    fail(answers.empty() || answers[0].sw != core::sw::ok ? "select refused" : "initialize update refused");
    return std::nullopt;
  }
  core::scp::InitializeUpdateAnswer init;
  try {
    init = core::scp::parse_initialize_update_answer(answers[1].data.data(), answers[1].data.size());
  } catch (const core::FormatError&) {
    fail("initialize update answer does not parse");
    return std::nullopt;
  }
  // The KDD names the chip: an answer from another chip (a relay) is refused before any key is used.
  if (init.kdd != Bytes(m_chip.bytes().begin(), m_chip.bytes().end()) || init.card_challenge.size() != kS16 ||
      init.i != 0x71) {
    fail("initialize update answer is not this chip's S16 channel");
    return std::nullopt;
  }
  if ((m_kvn != 0 && init.kvn != m_kvn) || (init.kvn != 1 && init.kvn != 2)) {
    fail("key version " + std::to_string(init.kvn) + " refused");
    return std::nullopt;
  }
  m_result.kvn = init.kvn;
  std::unique_ptr<StaticKeySource> keys;
  try {
    keys = open_keys(init.kvn);
  } catch (const core::Error& e) {
    // A version this server holds no master of: the session ends as not ok instead of a 500.
    if (e.code() != errc::NoMaster && e.code() != errc::BadKeyVersion) throw;
    fail("no key of version " + std::to_string(init.kvn));
    return std::nullopt;
  }
  // S-DEK is only for PUT KEY: without one queued, K-DEK is not derived on the token at all (three
  // token calls fewer per session) and the session's dek is filler nothing uses.
  bool rotation = false;
  for (const auto& j : m_jobs) rotation = rotation || j.kind == "put_key";
  auto token_cmac = keys->cmac();
  const core::scp::StaticCmac cmac = [&](core::scp::StaticKey which, const Bytes& data) {
    return which == core::scp::StaticKey::Dek && !rotation ? Bytes(16, 0) : token_cmac(which, data);
  };
  const auto session = core::scp::derive_scp03_session(cmac, 16, m_host_challenge, init.card_challenge);
  keys.reset();  // the static keys' token objects go now; only the session keys stay
  try {
    auto auth = core::scp::host_authenticate(session, m_host_challenge, init, kS16);
    m_sm.emplace(std::move(auth.session));
    std::vector<core::CommandApdu> batch{auth.external_authenticate};
    for (auto& c : wrapped_commands()) batch.push_back(std::move(c));
    return batch;
  } catch (const core::scp::SecureChannelError&) {
    fail("bad card cryptogram");
    return std::nullopt;
  }
}

std::vector<core::CommandApdu> HostSession::wrapped_commands() {
  std::vector<core::CommandApdu> out;
  for (std::size_t j = 0; j < m_jobs.size(); ++j) {
    const auto& job = m_jobs[j];
    const auto plain = job.kind == "item"     ? store_item_commands(job.dgi, job.payload)
                       : job.kind == "module" ? load_module_commands(job.payload)
                                              : put_key_commands(job);
    for (const auto& c : plain) {
      out.push_back(m_sm->wrap_command(c));
      m_answer_state.push_back(*m_sm);
      m_owner.push_back(j);
    }
  }
  out.push_back(m_sm->wrap_command(get_status_command()));
  m_answer_state.push_back(*m_sm);
  m_owner.push_back(kNoJob);
  return out;
}

// PUT KEY last among the jobs would be simpler, but jobs run oldest first; the card takes later
// commands of this session under the session keys it has, so order does not matter to it.
std::vector<core::CommandApdu> HostSession::put_key_commands(const Job& job) {
  const int target = job.payload.empty() ? 0 : job.payload[0];
  // A device already at (or past) the target has nothing to rotate: the job is sent nothing and ends
  // 'failed' with that reason, as the device would refuse it (6A80) anyway.
  if (target <= m_result.kvn || !m_comm) {
    m_result.jobs.push_back({job.id, false, "already at version " + std::to_string(m_result.kvn)});
    return {};
  }
  const core::SecureBytes comm = m_comm(target);
  return {core::scp::put_comm_key_command(m_sm->dek(), static_cast<std::uint8_t>(m_result.kvn),
                                          static_cast<std::uint8_t>(target), comm)};
}

void HostSession::finish(const std::vector<core::ResponseApdu>& answers) {
  if (answers.empty() || answers[0].sw != core::sw::ok) {
    fail("external authenticate refused");
    return;
  }
  std::vector<bool> refused(m_jobs.size(), false);
  std::size_t i = 1;
  bool complete = true;
  for (; i < answers.size() && i - 1 < m_owner.size(); ++i) {
    core::ResponseApdu plain;
    try {
      plain = m_answer_state[i - 1].unwrap_response(answers[i]);
    } catch (const core::scp::SecureChannelError&) {
      // Nothing after a bad R-MAC is believed; the jobs of this answer and later stay pending.
      fail("bad R-MAC");
      complete = false;
      break;
    }
    const std::size_t owner = m_owner[i - 1];
    if (plain.sw != core::sw::ok) {
      if (owner != kNoJob) {
        refused[owner] = true;
        m_result.jobs.push_back({m_jobs[owner].id, false, sw_hex(plain.sw), carries_rmac(answers[i])});
      }
      fail((owner == kNoJob ? "get status refused " : m_jobs[owner].kind + " refused ") + sw_hex(plain.sw));
      complete = false;
      break;
    }
    if (owner == kNoJob) {
      read_status(plain.data);
      if (!m_result.error.empty()) complete = false;
    } else if (m_owner[i] != owner) {                             // GET STATUS is last, so m_owner[i] exists
      m_result.jobs.push_back({m_jobs[owner].id, true, "9000"});  // the job's last piece answered 9000
      if (m_jobs[owner].kind == "put_key") m_result.new_kvn = m_jobs[owner].payload[0];
    }
  }
  if (complete && i - 1 < m_owner.size()) {
    fail("the device answered " + std::to_string(answers.size() - 1) + " of " +
         std::to_string(m_owner.size()) + " commands");
    complete = false;
  }
  if (complete) m_result.ok = true;
}

// core/service_module.h's layout; an answer that does not parse is the device's fault and ends the
// session as not ok (its jobs were applied already and stay so).
void HostSession::read_status(const core::SecureBytes& tlv) {
  core::service::DeviceStatus st;
  try {
    st = core::service::parse_device_status(tlv.data(), tlv.size());
  } catch (const core::FormatError&) {
    fail("get status answer does not parse");
    return;
  }
  std::string j = "{\"imei\":" + q(st.imei) + ",\"lifecycle\":" + std::to_string(st.lifecycle) +
                  ",\"kvn\":" + std::to_string(st.kvn) + ",\"modules\":[";
  for (std::size_t i = 0; i < st.modules.size(); ++i)
    j += std::string(i ? "," : "") + "{\"name\":" + q(st.modules[i].name) +
         ",\"version\":" + std::to_string(st.modules[i].version) + "}";
  j += "],\"items\":[";
  for (std::size_t i = 0; i < st.items.size(); ++i)
    j += std::string(i ? "," : "") + "{\"dgi\":" + q(dgi_hex(st.items[i].tag)) +
         ",\"sha256\":" + q(core::to_hex(st.items[i].sha256)) + "}";
  m_result.status = j + "]}";
}

std::string SessionResult::json(const std::vector<Job>& all) const {
  std::string j = std::string("{\"ok\":") + (ok ? "true" : "false") + ",\"kvn\":" + std::to_string(kvn) +
                  ",\"applied\":[";
  bool first = true;
  for (const auto& o : jobs) {
    if (!o.applied) continue;
    for (const auto& job : all)
      if (job.id == o.id) {
        j +=
            std::string(first ? "" : ",") + "{\"job\":" + std::to_string(job.id) + ",\"kind\":" + q(job.kind);
        if (job.kind == "item")
          j += ",\"dgi\":" + q(dgi_hex(job.dgi));
        else if (job.kind == "module")
          j += ",\"name\":" + q(job.module_name) + ",\"version\":" + std::to_string(job.module_version);
        else
          j += ",\"new_kvn\":" + std::to_string(job.payload.empty() ? 0 : job.payload[0]);
        j += "}";
        first = false;
      }
  }
  j += "],\"status\":" + status;
  if (!ok) j += ",\"error\":" + q(error);
  return j + "}";
}

}  // namespace keyline::service
