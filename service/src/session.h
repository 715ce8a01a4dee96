// One device's session, host side (docs/service.md "A session"): the first batch is SELECT and
// INITIALIZE UPDATE; the second EXTERNAL AUTHENTICATE (level 33) followed by the wrapped commands of the
// device's pending jobs and GET STATUS; the answers to the second batch end the session. Pure logic:
// no database, no HTTP; the server (server.cpp) keeps sessions and records their results.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "keyline/core/apdu.h"
#include "keyline/core/cplc.h"
#include "keyline/core/imei.h"
#include "keyline/core/scp03.h"
#include "keyline/core/scp03_session.h"

namespace keyline::service {

struct Job {
  std::int64_t id = 0;
  std::string kind;         // "item", "module" or "put_key"
  std::uint16_t dgi = 0;    // item
  core::Bytes payload;      // item value, the encoded module, or put_key's new version (1 byte)
  std::string module_name;  // module
  std::uint32_t module_version = 0;
};

struct JobOutcome {
  std::int64_t id = 0;
  bool applied = false;
  std::string detail;  // "9000", or the status word / failure that refused it
  // false for a refusal answered without an R-MAC (an error status word, GP Amendment D section
  // 6.2.5): the device or anyone on the path wrote it, so it does not end the job (store.cpp).
  bool authenticated = true;
};

struct SessionResult {
  bool ok = false;
  std::string error;             // short, public
  std::vector<JobOutcome> jobs;  // every job whose commands reached the device
  std::string status = "{}";     // GET STATUS as JSON (imei, lifecycle, kvn, modules, items)
  int kvn = 0;
  int new_kvn = 0;  // set when a PUT KEY was applied: the device's version from now on
  std::string json(const std::vector<Job>& jobs) const;
};

// Where a handshake's static-key CMACs come from: the token (DeviceStaticKeys) or, in the fuzz
// target, software keys. Destroying it forgets the keys.
class StaticKeySource {
 public:
  virtual ~StaticKeySource() = default;
  virtual core::scp::StaticCmac cmac() = 0;
};
// The static keys of derivation version `kvn` for this device.
using KeyOpener = std::function<std::unique_ptr<StaticKeySource>(int kvn)>;
// The communication key of derivation version `kvn` for this device, for PUT KEY (docs/service.md
// "Key rotation": the one place a comm key is in the server's memory, to be encrypted under S-DEK).
using CommSource = std::function<core::SecureBytes(int kvn)>;

class HostSession {
 public:
  // `kvn`: the version the service DB recorded for the device, 0 when none (INITIALIZE UPDATE P1 00:
  // the card answers its own, docs/service.md "Which version").
  HostSession(core::ChipId chip, int kvn, std::vector<Job> jobs, core::Bytes host_challenge,
              CommSource comm = {});

  std::vector<core::CommandApdu> first_batch() const;
  // The answers to the first batch. Returns the second batch, or nullopt when the session ended
  // (result() says why).
  std::optional<std::vector<core::CommandApdu>> second_batch(const std::vector<core::ResponseApdu>& answers,
                                                             const KeyOpener& open_keys);
  // The answers to the second batch: the session's end.
  void finish(const std::vector<core::ResponseApdu>& answers);

  const SessionResult& result() const noexcept { return m_result; }
  const std::vector<Job>& jobs() const noexcept { return m_jobs; }

 private:
  std::vector<core::CommandApdu> wrapped_commands();
  std::vector<core::CommandApdu> put_key_commands(const Job& job);
  void fail(const std::string& why) { m_result.ok = false, m_result.error = why; }
  void read_status(const core::SecureBytes& tlv);

  core::ChipId m_chip;
  int m_kvn;
  std::vector<Job> m_jobs;
  core::Bytes m_host_challenge;
  CommSource m_comm;
  std::optional<core::scp::SecureMessaging> m_sm;
  std::vector<std::size_t> m_owner;  // per wrapped command: the index into m_jobs, or npos for GET STATUS
  // The batch is wrapped before any answer comes back, so each answer is checked against the state
  // right after its own command was wrapped (its C-MAC chaining value and counter, Amendment D 6.2.5).
  std::vector<core::scp::SecureMessaging> m_answer_state;
  SessionResult m_result;
};

}  // namespace keyline::service
