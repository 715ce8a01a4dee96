// keyline-service's HostSession fed a device's answers: the first batch is answered by a genuine card
// (core's card functions, fixed keys and counter, so every run reaches the same open channel), then the
// input is the second batch's answers: a sequence of [length (1 byte)][R-APDU bytes]; an R-APDU shorter
// than its SW is given as SW 6F00. Whatever comes back, the session ends without a crash, and an
// answer list that is not the card's own never yields "ok" with jobs applied beyond what 9000s with a
// valid R-MAC allow (checked: ok implies every command was answered).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "keyline/core/apdu.h"
#include "keyline/core/applet_protocol.h"
#include "keyline/core/scp03_session.h"
#include "session.h"

using namespace keyline;

namespace {

class SoftKeys : public service::StaticKeySource {
 public:
  explicit SoftKeys(core::scp::Scp03StaticKeys k) : m_keys(std::move(k)) {}
  core::scp::StaticCmac cmac() override { return core::scp::software_cmac(m_keys); }

 private:
  core::scp::Scp03StaticKeys m_keys;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const core::SecureBytes comm(32, 0x42);
  const auto keys = core::scp::static_keys_from_comm(comm);
  const auto chip = core::ChipId::parse("A1B2C3D4E5F601020304");
  service::Job item{1, "item", 0x0F01, core::Bytes(300, 7), {}, 0};
  service::HostSession host(chip, 0, {item}, core::Bytes(16, 0x11));
  const auto first = host.first_batch();
  const core::Bytes aid(std::begin(core::applet::kAid), std::end(core::applet::kAid));
  const core::Bytes host_challenge(first[1].data.begin(), first[1].data.end());
  const auto init = core::scp::card_initialize(keys, 2, chip, host_challenge, 7, aid, 16);
  core::ResponseApdu select, answer;
  const auto enc = core::scp::encode_initialize_update_answer(init.answer);
  answer.data.assign(enc.begin(), enc.end());
  const auto second =
      host.second_batch({select, answer}, [&](int) { return std::make_unique<SoftKeys>(keys); });
  if (!second) std::abort();  // the genuine card must open the channel
  std::vector<core::ResponseApdu> answers;
  for (std::size_t p = 0; p < size;) {
    std::size_t len = data[p];
    ++p;
    len = std::min(len, size - p);
    core::ResponseApdu r;
    if (len >= 2) {
      r = core::decode_response(data + p, len);
    } else {
      r.sw = 0x6F00;
    }
    answers.push_back(std::move(r));
    p += len;
  }
  host.finish(answers);
  if (host.result().ok && answers.size() < second->size()) std::abort();
  (void)host.result().json(host.jobs());
  return 0;
}
