// Emulated cards in the readers of a test's private pcscd (tests/support/pcscd.sh, docs/readers.md):
// the readers the script made, devices made for a ROM root, and a card put in with
// `keyline-device serve --vpcd` and pulled out (SIGKILL) when it goes. The test's wrapper script sets
// KEYLINE_PCSC_DIR (pcscd.sh's directory), KEYLINE_PCSC_WORK and KEYLINE_DEVICE_BIN.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "keyline/core/pcsc.h"

namespace keyline::test {

// A variable the wrapper script must set (REQUIRE fails naming it otherwise).
std::string pcsc_env(const char* name);

struct Reader {
  std::string name;
  int port = 0;  // the vpcd port a card connects to
};
// DIR/readers of pcscd.sh ("<reader name> <vpcd port>" a line); REQUIREs `expected` of them.
std::vector<Reader> test_readers(std::size_t expected);

// A made device; its chip ID as `keyline-device make` printed it.
struct MadeDevice {
  std::string dir, chip_id;
};
MadeDevice make_device(const std::string& name, const std::string& rom_ca);

// Waits until pcscd reports a card in `reader` (or, with present = false, none); REQUIREs it.
core::pcsc::ReaderState wait_for_card(core::pcsc::Context& ctx, const std::string& reader, bool present,
                                      std::chrono::milliseconds limit = std::chrono::seconds(20));

class Card {
 public:
  // With `settle`: waits for the reader to be empty first (a card pulled just before stays present to
  // pcscd until its next poll of the vpcd reader, and its removal would reach this card's session),
  // then for this card to be seen.
  Card(const MadeDevice& device, const Reader& reader, std::vector<std::string> extra = {}, bool settle = false);
  ~Card() { pull(); }
  Card(const Card&) = delete;
  Card& operator=(const Card&) = delete;
  void pull();
  pid_t pid() const { return m_pid; }

 private:
  pid_t m_pid = -1;
};

}  // namespace keyline::test
